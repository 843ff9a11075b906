"""Log output formats: the plain text lines, or one JSON object per line for log collectors.

Clients control much of what gets logged (method and param names, token contents), so no
log line may carry their text raw: :func:`escape` turns newlines, other control characters,
Unicode line separators and lone surrogates into visible escapes, and both formatters apply
it (and a length bound) to every message, so a client can neither start a forged line nor
flood the log through one field. Call sites quote client values with :func:`clip`, which
cuts them to a short length first. In text, traceback lines are indented, so that only a
real record starts at the beginning of a line.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The longest message (and traceback line) a log line carries; the rest is cut, saying so.
MAX_MESSAGE_CHARS = 4000
#: The longest client-supplied value that :func:`clip` quotes in a message.
MAX_QUOTED_CHARS = 200

# C0 and C1 controls (newline, carriage return, escape, ...), DEL, the Unicode line and
# paragraph separators, and surrogates (which cannot even be encoded to UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INDENT = "    "


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """*text* with every character that could break or fake a log line as an escape."""
    return _UNSAFE.sub(_escape_one, text)


def bound(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """*text* cut to *limit* characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} chars, cut]"


def clip(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """A client-supplied value for a log message: escaped, at most *limit* characters."""
    text = value if isinstance(value, str) else repr(value)
    return escape(bound(text, limit))


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with the message escaped and bounded and tracebacks indented."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(bound(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return _indented(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return _indented(stack_info)


def _indented(text: str) -> str:
    return "\n".join(_INDENT + escape(bound(line)) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}``, plus ``audit`` fields and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # Escaped like the text format, so that the message reads the same in both.
            "message": escape(bound(record.getMessage())),
        }
        audit = getattr(record, "audit", None)
        if audit is not None:
            entry["audit"] = audit
        if record.exc_info:
            entry["traceback"] = bound(self.formatException(record.exc_info), 4 * MAX_MESSAGE_CHARS)
        # default=str: a log line must never fail because a value is not JSON. ensure_ascii
        # (the default) writes line separators and surrogates as \\u escapes.
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure(level: str, fmt: str, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
