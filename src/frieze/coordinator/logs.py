"""Structured logs: JSON lines on stderr through structlog, standard-library records (uvicorn, dbos)
included. A last processor masks anything that looks like a frieze token (``frz_…``, ``enr_…``) and any
value under a key that names a secret, as a second line of defence (secrets are never logged on purpose)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_TOKEN = re.compile(r"\b(frz|enr)_[A-Za-z0-9_\-]{8,}")
_SECRET_KEYS = ("password", "secret", "token", "key", "credential")


def _mask(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in list(event.items()):
        if any(s in k.lower() for s in _SECRET_KEYS) and k not in ("event", "path") and not k.endswith("_id"):
            event[k] = "***"
        elif isinstance(v, str):
            event[k] = _TOKEN.sub(r"\1_***", v)
    return event


def configure(level: str = "info", json: bool = True) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dbos"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    logging.getLogger("httpx").setLevel("WARNING")
