"""Structured logging set-up: structlog, JSON in containers, readable console locally.

Every log line is a constant event name plus key/value fields
(``log.info("machine launched", machine=name, pool=pool)``), so logs can be queried.
Debug calls on the reconcile hot path are filtered out before any formatting work.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog once per process.

    Args:
        json: JSON lines (default: when stderr is not a terminal, or $KAITO_LOG_FORMAT=json).
        level: minimum level name (default $KAITO_LOG_LEVEL or "info").
    """
    fmt = os.environ.get("KAITO_LOG_FORMAT", "")
    if json is None:
        json = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    level_name = (level or os.environ.get("KAITO_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
