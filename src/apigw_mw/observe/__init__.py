"""Tracing, access logs and metrics."""

from .access_log import AccessLog
from .metrics import Metrics
from .tracing import Tracing, console_tracer_provider

__all__ = ["AccessLog", "Metrics", "Tracing", "console_tracer_provider"]
