"""structlog set-up: one JSON object per line on stdout, with the request's ids bound to every line."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import msgspec
import structlog

_debug = False
_level = logging.INFO


def debug_enabled() -> bool:
    """Whether debug lines are written: the hot path skips building the ones that would be dropped."""
    return _debug


def shown(level: int) -> int:
    """level, or the least one written if it is higher: for a line that must reach the log whatever its level (a
    checkpoint of the routing log, which log shipping keeps outside the hub)."""
    return max(level, _level)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:  # stream: a text file on bytes
    """JSON lines to stdout (the server), or to stderr for commands whose stdout is their answer."""
    global _debug, _level
    stream = stream or sys.stdout
    numeric = logging.getLevelNamesMapping()[level.upper()]
    _debug, _level = numeric <= logging.DEBUG, numeric
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # msgspec renders a line several times faster than json.dumps: it runs once per request.
    encoder = msgspec.json.Encoder(enc_hook=repr)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, lambda _, __, event: encoder.encode(event)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(stream.buffer),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; render them the same way.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _exception_in_one_line,
                _traceback_as_exception,
                _forced_quit,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))  # one line per control-plane call is noise


def _exception_in_one_line(logger: object, name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """A library's warning about an exception (asyncpg's pool retrying while PostgreSQL is away) says which in one
    line, not as its exc_info tuple of reprs ("<traceback object at 0x...>"); an error (uvicorn's "Exception in ASGI
    application": a bug) keeps its traceback, formatted."""
    exc_info = event.get("exc_info")
    if name in ("debug", "info", "warning") and isinstance(exc_info, tuple) and exc_info[1] is not None:
        del event["exc_info"]
        event["error"] = f"{type(exc_info[1]).__name__}: {exc_info[1]}"
        return event
    return structlog.processors.format_exc_info(logger, name, event)


_TRACEBACK = "Traceback (most recent call last)"


def _traceback_as_exception(logger: object, name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """A traceback a library logs as its message (uvicorn: a worker whose start failed, with the app's lifespan
    traceback as the text) goes where a traceback goes, "exception", with its last line as "error": the "event" of
    the line is then a name to search for, not 60 lines of text."""
    text = event.get("event")
    if isinstance(text, str) and _TRACEBACK in text:
        lines = [line.strip(" |+-") for line in text.splitlines()]
        event["error"] = next((line for line in reversed(lines) if line), "")
        event["exception"] = text
        event["event"] = "lifespan_failed" if "lifespan" in text else "library_traceback"
    return event


def _forced_quit(logger: object, name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """uvicorn's forced quit (a second Ctrl-C while the hub stops) skips the app's shutdown, and the lifespan is
    cancelled instead: said as what it is, not as a failed lifespan with a traceback. The hub still closes what it
    opened (hub.app), and routing-log rows it could not commit go to its spool file (storage.routing_log)."""
    if event.get("event") == "lifespan_failed" and str(event.get("error", "")).endswith("CancelledError"):
        del event["exception"], event["error"]
        event.update(event="hub_stop_forced", level="warning", message="stopped without waiting for the "
                     "requests in flight (a second Ctrl-C); routing-log rows not committed are kept in the spool file "
                     "and written at the next start")  # fmt: skip
    return event
