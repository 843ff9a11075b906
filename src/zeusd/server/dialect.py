"""Which protocol a new connection speaks, from its first bytes (PROTOCOL.md section 7).

A first non-space byte ``{`` or ``[`` is the JSON-RPC line protocol; an HTTP request line
(``GET /…``) is HTTP/1.1; anything else goes to the JSON-RPC side too, which answers it with
a Parse error as it always has.
"""

from __future__ import annotations

import math

import trio

# The dialects' names, as the observer (metrics) is told them too.
from zeusd.core.observer import HTTP, JSONRPC

#: HTTP methods whose request line starts an HTTP connection.
HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
#: Undecided after this many bytes (only spaces, say): the JSON-RPC side takes over, with
#: its own line limit.
MAX_SNIFF_BYTES = 65536
_SPACE = b" \t\r\n"


def choose(prefix: bytes) -> str | None:
    """The dialect of a connection that began with *prefix*; None: read more first."""
    text = prefix.lstrip(_SPACE)
    if not text:
        return None if len(prefix) < MAX_SNIFF_BYTES else JSONRPC
    if text[:1] in (b"{", b"["):
        return JSONRPC
    word, space, _ = text.partition(b" ")
    if space:
        return HTTP if word in HTTP_METHODS else JSONRPC
    if any(method.startswith(word) for method in HTTP_METHODS):
        return None  # "GE": the rest of the method name is still on its way
    return JSONRPC


class Sniffer:
    """Reads a new connection's first bytes until :func:`choose` decides; drainable."""

    def __init__(self, stream: trio.abc.Stream, client_timeout: float) -> None:
        self._stream = stream
        self._client_timeout = client_timeout
        self._scope = trio.CancelScope()
        self._draining = False
        #: It has said nothing yet, so it has not authenticated (--auth-timeout).
        self.authenticated = False

    def drain(self) -> None:
        self._draining = True
        self._scope.cancel()

    async def read(self) -> tuple[str, bytes] | None:
        """The dialect and the bytes read so far; None if the client left or we drain."""
        data = b""
        deadline = math.inf
        while not self._draining:
            with self._scope:
                self._scope.deadline = deadline
                try:
                    chunk = await self._stream.receive_some(MAX_SNIFF_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
            if self._scope.cancelled_caught:
                # Drained, or a request began and was not finished in time: the JSON-RPC
                # side answers what came, as it answers any unfinished line.
                return None if self._draining else (JSONRPC, data)
            if not chunk:
                return (JSONRPC, data) if data else None
            data += chunk
            dialect = choose(data)
            if dialect is not None:
                return dialect, data
            if data.strip(_SPACE):
                deadline = trio.current_time() + self._client_timeout
            self._scope = trio.CancelScope()
        return None
