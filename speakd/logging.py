"""structlog setup: key=value lines for a console, JSON lines for a log shipper.

The level can change while the daemon runs (:func:`set_log_level`, on SIGHUP). Loggers are
cached on first use with whatever filtering they were built with, so the level is not built
into them: the first processor drops what is below the current level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")  # key=value lines, JSON lines

_threshold = logging.INFO


def log_level_number(level: str) -> int:
    """The standard library's number for ``level``; ValueError (naming the levels) if not one."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log.level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    return logging.getLevelNamesMapping()[level.upper()]


def _below_threshold(_logger: Any, method_name: str, event_dict: Any) -> Any:
    if structlog.processors.NAME_TO_LEVEL.get(method_name, logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event_dict


def set_log_level(level: str) -> None:
    """From now on, log at ``level`` and above (speakd's own lines and the libraries')."""
    global _threshold
    numeric = log_level_number(level)
    _threshold = numeric
    # Libraries log through the standard library: their warnings always, their chatter never.
    logging.getLogger().setLevel(max(numeric, logging.WARNING))


def configure_logging(level: str = "info", fmt: str = "console", node_id: str = "") -> None:
    """``node_id``: on every line (a processor, not a bound context variable: the sessions'
    tasks run in contexts of their own)."""

    def add_node_id(_logger: Any, _method_name: str, event_dict: Any) -> Any:
        event_dict.setdefault("node_id", node_id)
        return event_dict

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    set_log_level(level)
    structlog.configure(
        processors=[
            _below_threshold,
            structlog.contextvars.merge_contextvars,
            *([add_node_id] if node_id else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    node = f"node_id={node_id} " if node_id else ""  # libraries' lines (the standard library's) too
    logging.basicConfig(stream=sys.stderr, format=f"%(levelname)s %(name)s {node}%(message)s")
