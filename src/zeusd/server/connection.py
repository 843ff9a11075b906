"""One client connection: read lines, hand them to the dispatcher, write the replies.

Requests of a connection run concurrently: the reply of one that has GPU work is made and
queued when that work completes, in the lanes' report on the trio thread (no task per
request), and written right after, so a slow GPU never holds up a read of another.

What one client can hold is bounded: at most ``max_in_flight`` requests at a time (beyond
that the connection is simply not read, which pushes back on the client through TCP/UDS
flow control), at most ``OUTGOING_CAP`` bytes of replies queued for it (a request keeps its
slot until its reply is queued, a reply waits for room before it is queued, a batch's reply
is encoded member by member as room appears, and nothing more is read while the queue is
full), a started line must be finished within ``client_timeout`` seconds, and a reply the
client does not take within that time ends the connection. A connection that
sends nothing at all is left alone: holding a connection open is legitimate (subscriptions,
a training job's whole run); ``--max-connections`` bounds how many there are.

The connection is also its session's :class:`~zeusd.stream.outbox.Outbox`: a notification
is handed to the socket at once when nothing else waits to go out; otherwise it waits in one
slot per subscription (newest replaces unsent older) and a writer task queues them in the
same outgoing buffer as replies, so lines never interleave. A
subscription's lines are held back until the reply that created it has been written, and an
unsubscribe empties its slot before its reply is written, so no notification comes before
its subscribe response or after its unsubscribe response.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator

import trio

from zeusd.core.later import Later
from zeusd.core.session import Session
from zeusd.rpc.dispatch import (
    Dispatcher,
    Message,
    encode_reply,
    notification_line,
    parse_error,
    reply_parts,
)
from zeusd.rpc.framing import LineBuffer
from zeusd.server.nowait import send_nowait, socket_of
from zeusd.server.turns import Turns, user_of
from zeusd.stream.outbox import PowerSample

log = logging.getLogger(__name__)

RECEIVE_BYTES = 65536
#: Reply bytes queued for one client (written or not yet) beyond which nothing more is
#: queued or read until the client takes some: the bound on what a client that does not
#: read can make the daemon hold (plus one batch member or reply being added).
OUTGOING_CAP = 1 << 20
#: A batch's reply is handed to the socket in writes of about this size.
WRITE_CHUNK = 1 << 16
#: At close, how long a notification line already being written may take to finish.
WRITE_GRACE_S = 1.0
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Connection:
    """Serves one stream until the peer leaves, breaks the protocol, or the daemon drains."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatcher: Dispatcher,
        max_line_bytes: int,
        session: Session,
        *,
        max_in_flight: int = 64,
        client_timeout: float = 30.0,
        initial: bytes = b"",
        turns: Turns | None = None,
    ) -> None:
        self._stream = stream
        # Shared by the daemon's connections: users take turns at handling requests.
        self._turns = Turns() if turns is None else turns
        # What the dialect check read before this connection took over.
        self._initial = initial
        self._slots = trio.Semaphore(max_in_flight)
        self._client_timeout = client_timeout
        self.session = session
        self._dispatcher = dispatcher
        self._buffer = LineBuffer(max_line_bytes)
        # Bytes queued for the client, and those of the write under way; see _send.
        self._outgoing = bytearray()
        self._writing = 0
        self._flushing = False
        # A batch's line is being queued piece by piece: nobody else may queue meanwhile.
        self._streaming = False
        # Set (and replaced) whenever a write finishes or a streamed line is complete.
        self._flushed = trio.Event()
        self._dead = False
        self._stop_reading = False
        # Only the wait for more bytes is cancelled on drain: a reply being written is never
        # cut in half.
        self._receive_scope = trio.CancelScope()
        self._done = trio.Event()
        # Outbox state: subscriptions whose creating reply is not out yet (with their newest
        # sample, if any), subscriptions that may be written, and their unsent samples in order.
        self._held: dict[str, PowerSample | None] = {}
        self._open: set[str] = set()
        # An OrderedDict: taking the oldest and moving a key to the end are O(1) (a dict's
        # next(iter()) after many pops from its front is not).
        self._ready: OrderedDict[str, PowerSample] = OrderedDict()
        self._has_ready = trio.Event()
        self._line_keys: list[str] | None = None
        self._closing = False
        self._writer_done = trio.Event()
        self._writer_nursery: trio.Nursery | None = None
        self._writer_started = False
        # Requests whose reply is made in their work's report (see _reply_ready), and the
        # nursery that hosts what such a reply may still need (a wait for room, a write).
        self._pending = 0
        self._in_flight: trio.Nursery | None = None
        # The socket, when the bytes can be handed to it without waiting (see _write_now).
        self._socket = socket_of(stream)
        session.outbox = self

    @property
    def authenticated(self) -> bool:
        """Whether the client has authenticated (for --auth-timeout)."""
        return self.session.authenticated

    def drain(self) -> None:
        """Stop reading new requests; the ones in flight finish and are answered."""
        self._stop_reading = True
        self._receive_scope.cancel()
        self._done.set()

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as writer:
                # The notification writer starts with the first subscription: most
                # connections never have one, and an idle task costs memory per connection.
                self._writer_nursery = writer
                async with trio.open_nursery() as in_flight:
                    self._in_flight = in_flight
                    try:
                        if not await self._read_loop(in_flight):
                            # Hang up now, but let in-flight requests finish: their GPU work
                            # is queued already, and a failed notification must still be
                            # logged. Their replies have nowhere to go and are dropped.
                            await trio.aclose_forcefully(self._stream)
                            self._dead = True
                            self._done.set()
                        await self._replies_made()
                    finally:
                        # What reports after this (the connection was cut) is dropped.
                        self._in_flight = None
                if self.session.subscriptions:
                    # The client half-closed but may still be reading (`socat -t 10`):
                    # stream until it hangs up (a write fails) or the daemon drains.
                    await self._done.wait()
                # Let a line being written finish (a reader gets no half line), but do not
                # wait long on a client that stopped reading.
                self._closing = True
                self._has_ready.set()
                if self._writer_started:
                    with trio.move_on_after(WRITE_GRACE_S):
                        await self._writer_done.wait()
                writer.cancel_scope.cancel()
        finally:
            self.session.end_subscriptions()
            await trio.aclose_forcefully(self._stream)

    # -- Outbox ----------------------------------------------------------------------------

    def register(self, key: str) -> None:
        if not self._writer_started and self._writer_nursery is not None:
            self._writer_started = True
            self._writer_nursery.start_soon(self._write_notifications)
        self._held[key] = None
        if self._line_keys is not None:
            self._line_keys.append(key)

    def put(self, key: str, sample: PowerSample) -> None:
        if key in self._held:
            self._held[key] = sample
        elif key in self._open:
            idle = not (self._ready or self._outgoing or self._flushing or self._streaming)
            if idle and self._in_flight is not None and not self._dead:
                # Nothing waits to go out: the line is handed to the socket now, with no
                # wake-up of the writer task. What the socket does not take is flushed, and
                # newer samples wait in their slots meanwhile.
                self._outgoing += notification_line(sample)
                self._write_now()
                return
            self._ready[key] = sample
            self._ready.move_to_end(key)  # slots go out oldest-first
            self._has_ready.set()

    def drop(self, key: str) -> None:
        self._held.pop(key, None)
        self._open.discard(key)
        self._ready.pop(key, None)

    def _release(self, keys: list[str]) -> None:
        """The reply that created *keys* is written: their notifications may follow."""
        for key in keys:
            if key in self._held:
                sample = self._held.pop(key)
                self._open.add(key)
                if sample is not None:
                    self._ready[key] = sample
                    self._has_ready.set()

    async def _write_notifications(self) -> None:
        try:
            while True:
                await self._has_ready.wait()
                if self._closing:
                    return
                if self._flushing or self._streaming:
                    # One line at a time behind a slow reader: while it waits here, newer
                    # samples replace older ones in their slots instead of piling up.
                    await self._flushed.wait()
                    continue
                # Taken now, with no checkpoint before it is queued: an unsubscribe
                # answered meanwhile has emptied its slot.
                if self._ready:
                    _, sample = self._ready.popitem(last=False)
                    if not await self._send(notification_line(sample)):
                        return
                if not self._ready:
                    self._has_ready = trio.Event()
        finally:
            self._writer_done.set()

    async def _read_loop(self, in_flight: trio.Nursery) -> bool:
        """Read until EOF or drain (True) or until the peer is gone or broke framing (False)."""
        line_deadline = math.inf
        while not self._stop_reading:
            if self._queued() > OUTGOING_CAP:
                # The client is not taking its replies: read nothing more until it does.
                await self._room()
                if self._stop_reading:
                    break
            self._receive_scope = trio.CancelScope(deadline=line_deadline)
            data: bytes | bytearray = self._initial
            self._initial = b""
            with self._receive_scope:
                try:
                    if not data:
                        data = await self._stream.receive_some(RECEIVE_BYTES)
                except _GONE:
                    return False
            if self._receive_scope.cancelled_caught:
                if self._stop_reading:
                    break
                # A client that trickles a line, or never ends it, must not keep its
                # connection (one of --max-connections) for ever.
                log.warning(
                    "%s: line not finished within %g s; closing",
                    self.session.describe(),
                    self._client_timeout,
                )
                await self._send(
                    parse_error(f"line not finished within {self._client_timeout:g} s")
                )
                return False
            if not data:
                last = self._buffer.close()
                if last is not None:
                    await self._handle(last, in_flight)
                return True
            lines = self._buffer.feed(data)
            for line in lines:
                await self._handle(line, in_flight)
            if self._buffer.overflowed:
                # The contract: answer at once, without waiting for "\n", then hang up.
                await self._send(parse_error(f"line longer than {self._buffer.limit} bytes"))
                return False
            # The clock starts when a line starts: a steady stream of lines whose reads
            # happen to end mid-line never runs out of time.
            if not self._buffer.pending_bytes:
                line_deadline = math.inf
            elif lines or line_deadline == math.inf:
                line_deadline = trio.current_time() + self._client_timeout
        return True

    async def _handle(self, line: bytes, in_flight: trio.Nursery) -> None:
        # Waiting for a slot here is the backpressure: nothing more is read meanwhile.
        # A free slot is taken without Semaphore.acquire's checkpoint (a scheduler round).
        if self._slots.value:
            self._slots.acquire_nowait()
        else:
            await self._slots.acquire()
        keys: list[str] = []
        user = user_of(self.session)
        steps = self._dispatcher.steps(line, self.session)
        try:
            while True:  # one request at a time: the line's, or a batch's member
                if self._turns.due(user):  # this user has had its share of the loop for now
                    await self._turns.take(user)
                began = time.perf_counter()
                self._line_keys = keys
                try:
                    next(steps)
                except StopIteration as done:
                    reply = done.value
                    break
                finally:
                    self._line_keys = None
                    self._turns.charge(user, time.perf_counter() - began)
        except BaseException:
            steps.close()
            self._slots.release()
            raise
        if isinstance(reply, Later):
            self._pending += 1
            reply.on_done(functools.partial(self._reply_ready, keys))
            return
        if inspect.isawaitable(reply):
            in_flight.start_soon(self._finish, reply, keys)
            return
        try:
            if reply is not None:
                await self._send_message(reply)
        finally:
            self._slots.release()
        self._release(keys)

    async def _finish(self, reply: object, keys: list[str]) -> None:
        assert inspect.isawaitable(reply)
        # The slot is held until the reply is queued: requests whose replies wait for room
        # still count against --max-in-flight, so they stop the reading too.
        try:
            message = await reply
            if message is not None:
                await self._send_message(message)
        finally:
            self._slots.release()
        self._release(keys)

    def _reply_ready(self, keys: list[str], done: Later[Message | None]) -> None:
        """A request's reply is made (in its work's report, on the trio thread): queue it.

        It is queued and handed to the socket at once when there is room and nothing else
        is queueing or writing (the usual case); otherwise a task waits for room, as a
        reply made by a task does, or the write under way takes it along.
        """
        try:
            self._queue_ready(keys, done)
        except Exception:  # a bug: this runs in trio's run_sync_soon queue, never raise
            log.exception("%s: a reply could not be queued", self.session.describe())

    def _queue_ready(self, keys: list[str], done: Later[Message | None]) -> None:
        message = done.get()  # never raises: the dispatcher made any error a response
        if self._in_flight is None:  # the connection was cut while this was in flight
            return
        if message is not None and (
            isinstance(message, list) or self._streaming or self._queued() > OUTGOING_CAP
        ):
            self._in_flight.start_soon(self._send_ready, message, keys)
            return
        if message is not None and not self._dead:
            data = encode_reply(message)
            assert data is not None
            self._outgoing += data
            if not self._flushing:
                self._write_now()
        self._slots.release()
        self._release(keys)
        self._one_less()

    async def _send_ready(self, message: Message, keys: list[str]) -> None:
        try:
            await self._send_message(message)
        finally:
            self._slots.release()
            self._one_less()
        self._release(keys)

    def _one_less(self) -> None:
        self._pending -= 1
        if not self._pending:
            self._changed()

    async def _replies_made(self) -> None:
        """Wait until every request read has its reply queued (and being written)."""
        try:
            while self._pending:
                await self._flushed.wait()
        except trio.Cancelled:
            if self._pending:
                log.warning(
                    "%s: %d request(s) abandoned: the daemon stopped",
                    self.session.describe(),
                    self._pending,
                )
            raise

    def _write_now(self) -> None:
        """Hand the queued bytes to the socket without waiting; a flush task writes what it
        does not take at once (a full socket buffer), with the client deadline.

        No scheduler round and no task: a reply made in its work's report is on the wire
        before the report returns.
        """
        try:
            if self._flushing or self._dead or not self._outgoing or self._in_flight is None:
                return
            try:
                sent = send_nowait(self._socket, self._outgoing)
            except _GONE:
                # Nobody to answer; stop reading too, which ends the connection.
                self._dead = True
                self._outgoing = bytearray()
                self.drain()
                self._changed()
                return
            del self._outgoing[:sent]
            if not self._outgoing:
                self._changed()
                return
            self._flushing = True
            self._in_flight.start_soon(self._flush_claimed)
        except Exception:  # a bug: this runs in trio's run_sync_soon queue, never raise
            log.exception("%s: a reply could not be written", self.session.describe())

    async def _send_message(self, message: Message) -> bool:
        if isinstance(message, list):
            return await self._send_parts(reply_parts(message))
        data = encode_reply(message)
        assert data is not None
        return await self._send(data)

    def _queued(self) -> int:
        """Reply bytes held for the client: queued, plus those of the write under way."""
        return len(self._outgoing) + self._writing

    def _changed(self) -> None:
        self._flushed.set()
        self._flushed = trio.Event()

    async def _room(self) -> None:
        """Wait until the queue is under OUTGOING_CAP (or the connection is done for)."""
        while self._queued() > OUTGOING_CAP and self._flushing and not self._dead:
            await self._flushed.wait()

    async def _send(self, data: bytes) -> bool:
        """Queue *data* (one line or more) for the client. False: the connection is done for.

        Replies and notifications go into one buffer, in the order they are queued; whoever
        finds no write under way writes everything queued, so concurrent replies share one
        system call instead of queueing on a lock. A reply waits before it is queued while
        the buffer is full or a batch's line is being queued, so the buffer stays bounded.
        """
        while (self._streaming or self._queued() > OUTGOING_CAP) and not self._dead:
            await self._flushed.wait()
        if self._dead:
            return False
        self._outgoing += data
        if not self._flushing:
            await self._flush()
        return not self._dead

    async def _send_parts(self, parts: Iterator[bytes]) -> bool:
        """Queue one line made of *parts*, taking (encoding) each only when there is room.

        A large batch reply thus costs at most OUTGOING_CAP plus one member, and encoding it
        never runs ahead of a client that does not read.
        """
        while (self._streaming or self._queued() > OUTGOING_CAP) and not self._dead:
            await self._flushed.wait()
        self._streaming = True
        try:
            for part in parts:
                if self._dead:
                    return False
                self._outgoing += part
                if len(self._outgoing) < WRITE_CHUNK:
                    continue
                if not self._flushing:
                    await self._flush()  # writes it ourselves; yields to others meanwhile
                elif self._queued() > OUTGOING_CAP:
                    await self._room()
            if self._outgoing and not self._flushing and not self._dead:
                await self._flush()
        finally:
            self._streaming = False
            self._changed()
        return not self._dead

    async def _flush(self) -> None:
        """Write everything queued, including what others queue meanwhile."""
        self._flushing = True
        await self._flush_claimed()

    async def _flush_claimed(self) -> None:
        """_flush, for a caller that has set _flushing already."""
        try:
            while self._outgoing and not self._dead:
                # Handed over whole, not copied: a new buffer takes what is queued meanwhile.
                chunk, self._outgoing = self._outgoing, bytearray()
                self._writing = len(chunk)
                await self._write(chunk)
                self._writing = 0
                del chunk
        finally:
            self._flushing = False
            self._writing = 0
            if self._dead:
                self._outgoing = bytearray()
            self._changed()

    async def _write(self, data: bytes | bytearray) -> None:
        with trio.move_on_after(self._client_timeout) as scope:
            try:
                await self._stream.send_all(data)
                return
            except _GONE:
                # Nobody to answer; stop reading too, which ends the connection.
                self._dead = True
                self.drain()
                return
        # A client that does not read what it is sent would hold this connection and its
        # in-flight slots for ever; a cut-off write also leaves the stream unusable, so
        # hang up.
        assert scope.cancelled_caught
        log.warning(
            "%s: reply not taken within %g s; closing",
            self.session.describe(),
            self._client_timeout,
        )
        self._dead = True
        self.drain()
        await trio.aclose_forcefully(self._stream)
