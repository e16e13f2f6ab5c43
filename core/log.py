"""Structured logging: an event name and key/value fields, as JSON lines or readable lines on a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Logger:
    """A thin wrapper so call sites read `log.info("server.active", server=sid, host=h)`."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra=fields, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, True, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


LOG_FORMATS = ("auto", "json", "console")
FORMAT_ENV = "HVMESH_LOG_FORMAT"


class ConsoleFormatter(logging.Formatter):
    """One readable line per event: time, level, event, then key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        fields = " ".join(
            f"{key}={_console_value(value)}"
            for key, value in vars(record).items()
            if key not in _RESERVED and not key.startswith("_")
        )
        line = f"{stamp}.{millis:03d} {record.levelname.lower():<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _console_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or " " in text or '"' in text) else text


def _formatter(fmt: str, stream: Any) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    if fmt == "auto":
        is_tty = getattr(stream, "isatty", None)
        fmt = "console" if is_tty is not None and is_tty() else "json"
    return ConsoleFormatter() if fmt == "console" else JsonFormatter()


def setup(level: str = "info", stream: Any = None, fmt: str | None = None) -> None:
    """Send every hvmesh log line to `stream` (stderr).

    $HVMESH_LOG_FORMAT, else `fmt`, else "auto": "json" for one JSON object per line,
    "console" for readable lines, "auto" for readable lines on a terminal and JSON
    otherwise (files, pipes, log collectors).
    """
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(_formatter(os.environ.get(FORMAT_ENV) or fmt or "auto", out))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
