"""One HTTP/1.1 connection: read bytes, feed the protocol, dispatch, write the replies.

All of HTTP's rules live in ``zeusd.http``; this module only moves bytes. Requests of a
connection are answered one at a time, in order, with keep-alive. A started request must be
complete within ``client_timeout`` seconds (else 408, and the connection closes), and a
response the client does not take within that time ends the connection. An idle keep-alive
connection is left alone, as an idle JSON-RPC connection is. An event stream is written
until the client leaves or the daemon drains; while a write waits on a slow reader, newer
samples replace the one not yet sent.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
from collections.abc import Awaitable

import trio

from zeusd.core.errors import INVALID_REQUEST, PARSE_ERROR
from zeusd.core.later import Later
from zeusd.core.session import Session
from zeusd.http.protocol import Failure, HttpRequest, ServerProtocol, Wait
from zeusd.http.routes import EventStream, HttpFrontEnd, HttpResponse, Reply, error_body
from zeusd.http.sse import CONTENT_TYPE as EVENT_STREAM
from zeusd.server.nowait import send_nowait, socket_of

log = logging.getLogger(__name__)

RECEIVE_BYTES = 65536
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class _Gone(Exception):
    """The client went away, or did not take a response in time."""


class HttpConnection:
    """Serves one stream that began with an HTTP request line."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        front_end: HttpFrontEnd,
        session: Session,
        *,
        initial: bytes,
        max_body_bytes: int,
        client_timeout: float = 30.0,
    ) -> None:
        self._stream = stream
        self._socket = socket_of(stream)
        self._front_end = front_end
        self.session = session
        self._initial = initial
        self._protocol = ServerProtocol(max_body_bytes)
        self._client_timeout = client_timeout
        self._draining = False
        self._receive_scope = trio.CancelScope()
        self._wake = trio.Event()
        #: A request of this connection carried a token that was accepted (--auth-timeout).
        self.authenticated = False

    def drain(self) -> None:
        """Stop reading: a request being answered is finished, then the connection closes."""
        self._draining = True
        self._receive_scope.cancel()
        self._wake.set()

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as background:
                with contextlib.suppress(_Gone):
                    await self._serve(background)
        finally:
            self.session.end_subscriptions()
            await trio.aclose_forcefully(self._stream)

    async def _serve(self, background: trio.Nursery) -> None:
        protocol = self._protocol
        protocol.feed(self._initial)
        deadline = math.inf
        while True:
            event = protocol.next()
            if event is Wait.CLOSED:
                return
            if isinstance(event, Failure):
                await self._refuse(event.status, event.reason)
                return
            if event is Wait.NEED_DATA:
                if protocol.started and deadline == math.inf:
                    deadline = trio.current_time() + self._client_timeout
                if not protocol.started:
                    deadline = math.inf
                pending = protocol.take_output()
                if pending:
                    await self._write(pending)
                if self._draining:
                    return
                data = await self._receive(deadline)
                if data is None:
                    if self._draining:
                        return
                    log.warning(
                        "%s: HTTP request not finished within %g s; closing",
                        self.session.describe(),
                        self._client_timeout,
                    )
                    await self._refuse(
                        408, f"request not finished within {self._client_timeout:g} s"
                    )
                    return
                protocol.feed(data)
                continue
            deadline = math.inf
            if not await self._answer(event, background):
                return
            if self._draining or not protocol.next_cycle():
                return

    async def _answer(self, request: HttpRequest, background: trio.Nursery) -> bool:
        """Answer one request; False if the connection ends with it (an event stream)."""
        reply = self._front_end.handle(request, self.session)
        # Filled in when the response was made in the device work's report: what of it the
        # socket did not take at once (None: nothing).
        early: list[bytes | None] = []
        if isinstance(reply, Later):
            # Device work: the response is made and handed to the socket in the work's
            # report, before this task is even woken.
            reply.on_done(functools.partial(self._respond_early, early))
            reply = await reply
        elif inspect.isawaitable(reply):
            reply = await reply
        if request.header("authorization") is not None and getattr(reply, "status", 200) != 401:
            self.authenticated = True
        if isinstance(reply, EventStream):
            await self._stream_events(reply)
            return False
        assert isinstance(reply, HttpResponse)
        if early:
            rest = early[0]
            if rest is not None:
                await self._write(rest)
        else:
            await self._write(
                self._protocol.respond(reply.status, reply.body, reply.content_type, reply.headers)
            )
        if reply.background is not None:
            background.start_soon(_run, reply.background)
        return True

    def _respond_early(self, sent: list[bytes | None], done: Later[Reply]) -> None:
        """In the device work's report: make the response and hand the socket what it takes
        at once. *sent* gets what is left to write (None: nothing), or stays empty if the
        response is left to the task (it was not a plain response, or the client is gone)."""
        try:
            reply = done.get()
            if not isinstance(reply, HttpResponse) or reply.background is not None:
                return
            data = self._protocol.respond(
                reply.status, reply.body, reply.content_type, reply.headers
            )
            try:
                taken = send_nowait(self._socket, data)
            except _GONE:
                taken = 0  # the task's write finds the client gone
            sent.append(data[taken:] if taken < len(data) else None)
        except Exception:  # a bug: this runs in trio's run_sync_soon queue, never raise
            log.exception("%s: an HTTP response could not be made", self.session.describe())

    async def _stream_events(self, stream: EventStream) -> None:
        await self._write(
            self._protocol.start_stream(EVENT_STREAM, [("cache-control", "no-cache")])
        )
        stream.slots.on_ready = lambda: self._wake.set()
        async with trio.open_nursery() as nursery:
            # The client never sends more on a stream; its EOF (or a reset) ends the stream.
            nursery.start_soon(self._watch_hangup, nursery.cancel_scope)
            while not self._draining:
                samples = stream.slots.take()
                if not samples:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                await self._write(
                    b"".join(self._protocol.stream_data(stream.render(s)) for s in samples)
                )
            nursery.cancel_scope.cancel()
        if self._draining:
            await self._write(self._protocol.end_stream())

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _GONE:
                data = b""
            if not data:
                scope.cancel()
                return

    async def _receive(self, deadline: float) -> bytes | bytearray | None:
        """Bytes from the client (``b""`` at EOF); None when drained or past *deadline*."""
        self._receive_scope = trio.CancelScope(deadline=deadline)
        if self._draining:
            return None
        with self._receive_scope:
            try:
                return await self._stream.receive_some(RECEIVE_BYTES)
            except _GONE:
                raise _Gone from None
        return None

    async def _refuse(self, status: int, reason: str) -> None:
        code, message = (
            (PARSE_ERROR, "Parse error") if status == 400 else (INVALID_REQUEST, "Invalid Request")
        )
        body = error_body(code, message, {"reason": reason})
        with contextlib.suppress(_Gone):
            await self._write(self._protocol.refuse(status, body, "application/json"))

    async def _write(self, data: bytes) -> None:
        # Most responses fit the socket's buffer: handed over at once, with no scheduler
        # round; only the rest waits, with the deadline.
        try:
            sent = send_nowait(self._socket, data)
        except _GONE:
            raise _Gone from None
        if sent == len(data):
            return
        with trio.move_on_after(self._client_timeout) as scope:
            try:
                await self._stream.send_all(memoryview(data)[sent:])
            except _GONE:
                raise _Gone from None
        if scope.cancelled_caught:
            log.warning(
                "%s: HTTP response not taken within %g s; closing",
                self.session.describe(),
                self._client_timeout,
            )
            raise _Gone


async def _run(work: Awaitable[None]) -> None:
    await work
