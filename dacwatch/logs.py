"""structlog setup: JSON lines when not on a terminal (journald), console rendering on one.

Third-party loggers (watchdog, torch, py.warnings) go through the same
renderer via the standard library bridge.
"""

from __future__ import annotations

import logging
import sys
from pathlib import PurePath
from typing import Any, TextIO

import structlog

from dacwatch.names import printable

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_json:
        final.append(structlog.processors.dict_tracebacks)
    final += [printable_names, renderer]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # watchdog chatters at debug about every inotify event; keep it to warnings.
    logging.getLogger("watchdog").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)


def printable_names(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Every name in an event, the traceback's text included, in its printable form
    (:func:`dacwatch.names.printable`): a name that is not UTF-8 is a ``str`` with lone
    surrogates, which JSON would write as ``\\udce9`` and a strict stream refuses."""
    return {k: _printable(v) for k, v in event.items()}


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, PurePath):
        return printable(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def get(name: str = "dacwatch") -> Any:
    return structlog.get_logger(name)
