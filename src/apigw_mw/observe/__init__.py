"""Tracing, access logs and metrics."""
