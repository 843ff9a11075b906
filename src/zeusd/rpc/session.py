"""Per-connection state that methods may read or change: who the caller is, and its options.

The connection creates one Session when a client connects and passes it with every line;
handlers receive it next to the daemon-wide Context. No I/O happens here: a connection
that can push messages (subscriptions) installs its own ``notify``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs


def _discard(message: bytes) -> None:
    pass


@attrs.define(kw_only=True)
class Session:
    """One client connection as the RPC layer sees it."""

    #: "uds" or "tcp".
    transport: str
    #: Peer credentials (SO_PEERCRED) on Unix sockets; None on TCP or when unknown.
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    #: Sends a server-initiated line (a notification) to this client; never blocks.
    notify: Callable[[bytes], None] = _discard
