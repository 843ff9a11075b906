"""The daemon's lifetime: serve connections, then drain and stop cleanly on request."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Protocol

import trio

from zeusd.core.observer import HTTP, JSONRPC, NoObserver, Observer
from zeusd.core.session import Session
from zeusd.failure_runs import FailureRun
from zeusd.gpu.lanes import GpuLanes
from zeusd.http.routes import HttpFrontEnd
from zeusd.rpc.dispatch import Dispatcher
from zeusd.server.accept import serve_listener
from zeusd.server.connection import Connection
from zeusd.server.dialect import Sniffer
from zeusd.server.hangups import Hangups
from zeusd.server.http_connection import HttpConnection
from zeusd.server.peercred import database_groups, peer_cred
from zeusd.server.ratelimit import RateLimitedReport
from zeusd.server.turns import Turns

log = logging.getLogger(__name__)

#: How long queued GPU work (requests in flight, restores) gets after SIGTERM.
DRAIN_GRACE_S = 10.0
#: At most one log line per this many seconds about connections closed unauthenticated.
REPORT_EVERY_S = 1.0
#: After that, how long connections get to write the replies of what was abandoned.
REPLY_GRACE_S = 1.0


class Served(Protocol):
    """A connection as the server tracks it: one it can tell to drain."""

    def drain(self) -> None: ...


class _Current:
    """The connection a client stream is served by: first its Sniffer, then its dialect's."""

    def __init__(self, connection: Sniffer | Connection | HttpConnection) -> None:
        self.connection = connection


class Server:
    """Accepts connections on one listener; each is served in the dialect its first bytes
    choose: a JSON-RPC :class:`Connection` or an :class:`HttpConnection`."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        lanes: GpuLanes,
        max_line_bytes: int,
        transport: str,
        *,
        max_connections: int = 1024,
        max_in_flight: int = 64,
        client_timeout: float = 30.0,
        auth_timeout: float | None = None,
        on_session_closed: Callable[[Session], None] = lambda session: None,
        before_lanes_close: Callable[[list[Session]], None] = lambda sessions: None,
        http: HttpFrontEnd | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        #: Told of each connection, by dialect, as it opens and closes (the metrics).
        self._observer = observer or NoObserver()
        self._http = http
        self._transport = transport
        self._lanes = lanes
        self._max_line_bytes = max_line_bytes
        self._max_connections = max_connections
        self._max_in_flight = max_in_flight
        self._client_timeout = client_timeout
        self._auth_timeout = auth_timeout
        self._auth_report = RateLimitedReport(log, REPORT_EVERY_S)
        self._on_session_closed = on_session_closed
        self._before_lanes_close = before_lanes_close
        self._connections: set[Served] = set()
        self._turns = Turns()
        self._hangups: Hangups[Served] = Hangups()
        #: A run of refused connections is one log line, with a count.
        self._refusals = FailureRun(log, "refusing connections (--max-connections)")
        self._stop = trio.Event()
        self._force = trio.Event()
        self._stopped = trio.Event()
        self._all_closed = trio.Event()
        self._grace = trio.CancelScope()

    def stop(self, *, force: bool = False) -> None:
        """Begin shutdown: stop accepting and reading; *force* also cuts in-flight work."""
        self._stop.set()
        if force:
            self._force.set()
            self._grace.cancel()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one client stream; never lets a client's failure escape."""
        if len(self._connections) >= self._max_connections:
            # Connections whose clients hung up before we read their end do not count.
            for gone in self._hangups.hung_up():
                self._connections.discard(gone)
        if len(self._connections) >= self._max_connections:
            # Refused at once, so that a flood of connections costs nothing that lasts.
            self._refusals.failed(f"{len(self._connections)} are open already")
            await trio.aclose_forcefully(stream)
            return
        self._refusals.succeeded()
        session = Session(transport=self._transport)
        if isinstance(stream, trio.SocketStream):
            cred = peer_cred(stream.socket)  # type: ignore[arg-type]
            if cred is not None:
                session.pid, session.uid, session.gid = cred.pid, cred.uid, cred.gid
                session.groups = cred.groups
                if not cred.groups_from_kernel:
                    # User database lookups can block (NSS, LDAP): not on the event loop.
                    session.groups = await trio.to_thread.run_sync(
                        database_groups, cred.uid, cred.gid
                    )
        # The first bytes say which protocol this is; until then the connection can drain.
        current = _Current(Sniffer(stream, self._client_timeout))
        if self._auth_timeout is None:
            await self._serve_one(stream, session, current)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._close_unless_authenticated, current, session)
            await self._serve_one(stream, session, current)
            nursery.cancel_scope.cancel()

    async def _serve_one(
        self, stream: trio.abc.Stream, session: Session, current: _Current
    ) -> None:
        sniffer = current.connection
        assert isinstance(sniffer, Sniffer)
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._connections.add(sniffer)
        # A client that hangs up before saying anything must not count either.
        fd = self._hangups.add(sock, sniffer) if sock is not None else -1
        try:
            first = await sniffer.read()
        finally:
            self._connections.discard(sniffer)
            if fd >= 0:
                self._hangups.discard(fd, sniffer)
            if not self._connections and self._stop.is_set():
                self._all_closed.set()
        if first is None:  # gone, or drained or timed out, before it said anything
            await trio.aclose_forcefully(stream)
            return
        dialect, initial = first
        connection: Connection | HttpConnection
        speaks = JSONRPC
        if dialect == HTTP and self._http is not None:
            speaks = HTTP
            connection = HttpConnection(
                stream,
                self._http,
                session,
                initial=initial,
                max_body_bytes=self._max_line_bytes,
                client_timeout=self._client_timeout,
            )
        else:
            connection = Connection(
                stream,
                self._dispatcher,
                self._max_line_bytes,
                session,
                max_in_flight=self._max_in_flight,
                client_timeout=self._client_timeout,
                initial=initial,
                turns=self._turns,
            )
        current.connection = connection
        self._connections.add(connection)
        if sock is not None:
            self._hangups.add(sock, connection)
        log.debug("connection #%d opened: %s", session.id, session.describe())
        self._observer.connection_opened(speaks)
        try:
            await connection.serve()
        except Exception:
            log.exception("connection failed; other connections are unaffected")
        finally:
            self._observer.connection_closed(speaks)
            self._connections.discard(connection)
            if fd >= 0:
                self._hangups.discard(fd, connection)
            if not self._connections and self._stop.is_set():
                self._all_closed.set()
            try:
                self._on_session_closed(session)
            except Exception:
                log.exception("cleanup after connection #%d failed", session.id)

    async def _close_unless_authenticated(self, current: _Current, session: Session) -> None:
        """Where a token is required, a connection that has none in time gives its slot back.

        Otherwise idle unauthenticated connections, which cost an attacker nothing, could hold
        all of --max-connections and lock out every token holder.
        """
        assert self._auth_timeout is not None
        await trio.sleep(self._auth_timeout)
        if current.connection.authenticated:
            return
        self._auth_report.warning(
            "closing %s: not authenticated within %g s",
            session.describe(),
            self._auth_timeout,
        )
        current.connection.drain()

    async def run(
        self,
        listener: trio.SocketListener,
        on_closed: Callable[[], None] = lambda: None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until stop(); then finish in-flight requests and the queued GPU work.

        *on_closed* runs as soon as no new connection can arrive (to remove a socket file).
        """
        try:
            await self._serve(listener, on_closed, task_status)
        finally:
            self._stopped.set()

    async def _serve(
        self,
        listener: trio.SocketListener,
        on_closed: Callable[[], None],
        task_status: trio.TaskStatus[None],
    ) -> None:
        lanes_done = trio.Event()

        async def run_lanes(*, task_status: trio.TaskStatus[None]) -> None:
            try:
                await self._lanes.run(task_status=task_status)
            finally:
                lanes_done.set()

        async with trio.open_nursery() as work:
            await work.start(run_lanes)
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()

                async def accept() -> None:
                    with accepting:
                        await serve_listener(listener, self.handle, connections)

                connections.start_soon(accept)
                task_status.started()
                await self._stop.wait()
                accepting.cancel()
                on_closed()
                for connection in list(self._connections):
                    connection.drain()
                # Queue the exit restores now, behind what every GPU has queued, and
                # close the lanes: what is queued runs; a request read from now on is
                # answered that the daemon is stopping.
                # A connection still choosing its dialect has asked for nothing yet.
                self._before_lanes_close(
                    [
                        c.session
                        for c in self._connections
                        if isinstance(c, Connection | HttpConnection)
                    ]
                )
                self._lanes.close()
                if not self._connections:
                    self._all_closed.set()
                await self._settle(lanes_done, connections.cancel_scope)

    async def _settle(self, lanes_done: trio.Event, connections: trio.CancelScope) -> None:
        """Let queued work finish for DRAIN_GRACE_S (not when forced); abandon the rest."""
        with self._grace:
            if self._force.is_set():
                self._grace.cancel()
            self._grace.deadline = trio.current_time() + DRAIN_GRACE_S
            await lanes_done.wait()
            await self._all_closed.wait()
        if not lanes_done.is_set():
            hung = ", ".join(map(str, self._lanes.busy()))
            why = "forced stop" if self._force.is_set() else f"not done in {DRAIN_GRACE_S:.0f} s"
            jobs = self._lanes.abandon()
            log.warning(
                "%s: abandoning %d queued GPU job(s) on GPU %s; their requests are answered"
                " with an error",
                why,
                len(jobs),
                hung,
            )
        with trio.move_on_after(REPLY_GRACE_S):
            await self._all_closed.wait()
        if self._connections:
            log.warning("cutting %d connection(s) still open", len(self._connections))
            connections.cancel()

    async def wait_stopped(self) -> None:
        """Return once run() has finished."""
        await self._stopped.wait()


async def stop_on_signals(
    server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """First SIGINT/SIGTERM drains the server; a second one forces it to stop."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            log.info(
                "received %s, %s",
                signal.Signals(signum).name,
                "draining" if count == 1 else "stopping now",
            )
            server.stop(force=count > 1)
