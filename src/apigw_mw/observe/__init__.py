"""Tracing, access logs and metrics."""

from .access_log import AccessLog, console_access_log
from .metrics import Metrics
from .tracing import Tracing, console_tracer_provider

__all__ = ["AccessLog", "Metrics", "Tracing", "console_access_log", "console_tracer_provider"]
