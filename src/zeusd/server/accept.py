"""The accept loop: a task per new connection, and a quiet wait when descriptors run out.

trio's ``serve_listeners`` logs an ERROR with a traceback every 0.1 s while ``accept`` fails
for lack of file descriptors (EMFILE and kin), so a client that opens connections up to the
descriptor limit filled the log. Here such a failure waits and retries just the same, and
is reported at most once per :data:`REPORT_EVERY_S`, with the count of failures in between.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from zeusd.server.ratelimit import RateLimitedReport

log = logging.getLogger(__name__)

#: accept(2) errors that mean "out of descriptors or memory for now": wait and retry.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long to wait after such a failure before accepting again.
RETRY_S = 0.1
#: At most one log line about failing accepts per this many seconds.
REPORT_EVERY_S = 1.0


async def serve_listener(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    handler_nursery: trio.Nursery,
) -> None:
    """Accept on *listener* until cancelled, running ``handler(stream)`` in *handler_nursery*."""
    report = RateLimitedReport(log, REPORT_EVERY_S)
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                code = exc.errno or 0
                if code not in CAPACITY_ERRNOS:
                    raise
                # The pending connection stays in the kernel's backlog; open ones are
                # served as usual meanwhile.
                report.warning(
                    "cannot accept a connection: %s (%s); retrying every %g s",
                    errno.errorcode.get(code, code),
                    os.strerror(code),
                    RETRY_S,
                )
                await trio.sleep(RETRY_S)
                continue
            handler_nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(
    handler: Callable[[trio.SocketStream], Awaitable[object]], stream: trio.SocketStream
) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)
