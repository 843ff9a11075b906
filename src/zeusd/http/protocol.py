"""HTTP/1.1 for the server side, sans-I/O: bytes in, requests out; responses in, bytes out.

A thin layer over h11 that adds what the daemon needs: the whole request (head and body)
as one :class:`HttpRequest`, the bounds on heads (:data:`MAX_HEAD_BYTES`, else 431) and
bodies (*max_body*, else 413), a :class:`Failure` for input that breaks HTTP (answer it, then
close), ``100 Continue`` for clients that wait for it, and responses, streamed ones too.
Nothing here waits or touches a socket, so every rule is tested synchronously.
"""

from __future__ import annotations

import enum
import functools
import http
from collections.abc import Sequence

import attrs
import h11

#: Request heads (request line and headers) longer than this get 431.
MAX_HEAD_BYTES = 16 * 1024
#: Response heads kept for reuse (see ServerProtocol.respond); past this many, they start over.
MAX_CACHED_HEADS = 256
#: Every whole response ends the same way; h11 events are immutable, so one does for all.
_END = h11.EndOfMessage()

Headers = Sequence[tuple[str, str]]


class Wait(enum.Enum):
    """What :meth:`ServerProtocol.next` says when it has no request to give."""

    #: Feed more bytes.
    NEED_DATA = "need data"
    #: The client closed the connection between requests.
    CLOSED = "closed"


@attrs.frozen
class HttpRequest:
    method: str
    #: The path, without the query.
    path: str
    #: The raw query string (after ``?``), still percent-encoded.
    query: str
    #: Header names in lower case, in the order sent.
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header *name* (lower case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@attrs.frozen
class Failure:
    """The client broke HTTP: answer with *status* (and *reason*), then close."""

    status: int
    reason: str


@functools.cache
def reason_phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


#: Response events by (status, content type, length, extra headers), shared by all
#: connections: a daemon answers with few distinct heads (the same route gives the same
#: length), and an event built once skips h11's validation of every header each time.
_heads: dict[tuple[int, str, int, Headers], h11.Response] = {}


def _head(status: int, content_type: str, length: int, headers: Headers) -> h11.Response:
    key = (status, content_type, length, headers)
    event = _heads.get(key)
    if event is None:
        if len(_heads) >= MAX_CACHED_HEADS:
            _heads.clear()
        fields = [("content-type", content_type), ("content-length", str(length)), *headers]
        event = _heads[key] = h11.Response(
            status_code=status, headers=fields, reason=reason_phrase(status)
        )
    return event


class ServerProtocol:
    """One connection's HTTP state: feed bytes, take requests, hand responses back as bytes."""

    def __init__(self, max_body: int) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._max_body = max_body
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._output = bytearray()
        self._head_only = False
        self._headers: tuple[tuple[str, str], ...] = ()

    # -- receiving -------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes from the client; ``b""`` means it half-closed (EOF)."""
        self._h11.receive_data(bytes(data))

    @property
    def started(self) -> bool:
        """Whether part of a request has arrived but not all of it."""
        return self._request is not None or bool(self._h11.trailing_data[0])

    def take_output(self) -> bytes:
        """Bytes to send that no response carries (``100 Continue``)."""
        if not self._output:
            return b""
        out = bytes(self._output)
        self._output.clear()
        return out

    def next(self) -> HttpRequest | Failure | Wait:
        """The next whole request, a Failure, or what to do to get one."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                return Failure(exc.error_status_hint, str(exc) or "malformed request")
            if event is h11.NEED_DATA:
                return Wait.NEED_DATA
            if isinstance(event, h11.Request):
                # Decoded once, in one pass over h11's list (iterating its Headers asks for
                # each item in turn); h11 has checked every name and value already.
                self._headers = tuple(
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in event.headers.raw_items()
                )
                # h11 bounds a head still arriving; one that came whole is measured here.
                if _head_bytes(event, self._headers) > MAX_HEAD_BYTES:
                    return Failure(431, f"request head longer than {MAX_HEAD_BYTES} bytes")
                length = _content_length(self._headers)
                if length is not None and length > self._max_body:
                    return Failure(413, f"body of {length} bytes; at most {self._max_body}")
                self._request = event
                self._body.clear()
                if self._h11.they_are_waiting_for_100_continue:
                    self._output += self._h11.send(
                        h11.InformationalResponse(status_code=100, headers=[])
                    )
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    return Failure(413, f"body longer than {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return Wait.CLOSED

    def _complete(self) -> HttpRequest:
        request = self._request
        assert request is not None
        self._request = None
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = request.method.decode("ascii")
        self._head_only = method == "HEAD"
        return HttpRequest(method, path, query, self._headers, bytes(self._body))

    # -- sending ---------------------------------------------------------------------------

    def respond(self, status: int, body: bytes, content_type: str, headers: Headers = ()) -> bytes:
        """A whole response to the current request, as the bytes of one write."""
        out = self._h11.send(_head(status, content_type, len(body), tuple(headers)))
        assert out is not None
        if body and not self._head_only:
            out += self._h11.send(h11.Data(data=body))
        return out + self._h11.send(_END)

    def start_stream(self, content_type: str, headers: Headers = ()) -> bytes:
        """The head of a 200 whose body follows in pieces (chunked)."""
        fields = [("content-type", content_type), *headers]
        return self._h11.send(h11.Response(status_code=200, headers=fields, reason=b"OK"))

    def stream_data(self, data: bytes) -> bytes:
        return self._h11.send(h11.Data(data=data))

    def end_stream(self) -> bytes:
        return self._h11.send(h11.EndOfMessage())

    def refuse(self, status: int, body: bytes, content_type: str) -> bytes:
        """The response to a Failure; it closes the connection. Works whatever state h11 is in
        (it may have given up on the request before its head was complete)."""
        try:
            return self.respond(status, body, content_type, [("connection", "close")])
        except h11.LocalProtocolError:
            head = (
                b"HTTP/1.1 %d %s\r\nconnection: close\r\ncontent-type: %s\r\n"
                b"content-length: %d\r\n\r\n"
                % (status, reason_phrase(status), content_type.encode(), len(body))
            )
            return head + body

    def next_cycle(self) -> bool:
        """After a response: True if the connection stays open for another request."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._head_only = False
            return True
        return False


def _head_bytes(request: h11.Request, headers: tuple[tuple[str, str], ...]) -> int:
    """The length of *request*'s head as sent, at the least (h11 drops optional spaces)."""
    line = len(request.method) + len(request.target) + 12  # 2 spaces, HTTP/1.1, CRLF
    return line + sum(len(name) + len(value) + 3 for name, value in headers) + 2


def _content_length(headers: tuple[tuple[str, str], ...]) -> int | None:
    for name, value in headers:
        if name == "content-length":
            return int(value)  # h11 has checked that it is a number
    return None
