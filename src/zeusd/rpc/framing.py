"""Splitting a byte stream into lines, with a cap on line length. No I/O here.

The connection code feeds whatever ``receive_some`` returned and gets back complete lines;
this keeps the framing rules (``\\r\\n``, the size cap, a last line without ``\\n``) testable
synchronously.
"""

from __future__ import annotations


class LineBuffer:
    """Accumulates bytes and yields complete lines, ``\\n`` and a trailing ``\\r`` removed."""

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"'max_line_bytes' must be >= 1 (got {max_line_bytes})")
        self._max = max_line_bytes
        self._buf = bytearray()
        # Where to resume looking for b"\n": rescanning the whole partial line on every
        # small read would make a slowly trickled long line quadratic.
        self._scanned = 0
        #: Set once a line passed the cap; the buffer then takes no more input.
        self.overflowed = False

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add *data*; return the lines it completed.

        If a line passes the cap (complete or not), the lines before it are returned and
        :attr:`overflowed` is set: the caller answers them, then reports the error.
        """
        if self.overflowed:
            return []
        buf = self._buf
        buf += data
        lines: list[bytes] = []
        start = 0
        pos = buf.find(b"\n", self._scanned)
        while pos != -1:
            end = pos - 1 if pos > start and buf[pos - 1] == 0x0D else pos
            if end - start > self._max:
                return self._overflow(lines)
            lines.append(bytes(buf[start:end]))
            start = pos + 1
            pos = buf.find(b"\n", start)
        if start:
            del buf[:start]
        # A pending "\r" may still be the end of a "\r\n", so it does not count yet.
        pending = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        if pending > self._max:
            return self._overflow(lines)
        self._scanned = len(buf)
        return lines

    def _overflow(self, lines: list[bytes]) -> list[bytes]:
        self.overflowed = True
        self._buf.clear()
        return lines

    @property
    def limit(self) -> int:
        return self._max

    def close(self) -> bytes | None:
        """End of stream: return the unterminated last line, if any, and reset."""
        rest = bytes(self._buf[:-1] if self._buf.endswith(b"\r") else self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest or None

    @property
    def pending_bytes(self) -> int:
        """Bytes received that are not yet part of a complete line."""
        return len(self._buf)
