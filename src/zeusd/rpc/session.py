"""Per-connection state that methods may read or change: who the caller is, and its options.

The connection creates one Session when a client connects and passes it with every line;
handlers receive it next to the daemon-wide Context. No I/O happens here: a connection
that can push messages (subscriptions) installs its own ``notify``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs

_ids = itertools.count(1)


def _discard(message: bytes) -> None:
    pass


@attrs.define(kw_only=True, eq=False)
class Session:
    """One client connection as the RPC layer sees it."""

    #: "uds" or "tcp".
    transport: str
    #: Peer credentials (SO_PEERCRED) on Unix sockets; None on TCP or when unknown.
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    #: The peer's primary and supplementary groups (SO_PEERGROUPS), for --control-gids.
    groups: tuple[int, ...] = ()
    #: Sends a server-initiated line (a notification) to this client; never blocks.
    notify: Callable[[bytes], None] = _discard
    #: Set by a successful ``session.authenticate``: the token's subject, scopes and expiry.
    subject: str | None = None
    scopes: tuple[str, ...] | None = None
    expires_at: int | None = None
    #: Whether the settings this connection changed are put back when it closes.
    restore_on_close: bool = False
    #: Names the session in logs and in the restore ledger; unique within the daemon.
    id: int = attrs.field(factory=lambda: next(_ids))

    @property
    def authenticated(self) -> bool:
        return self.subject is not None

    def describe(self) -> str:
        """Who this is, for log lines: the token subject, else the peer's pid/uid."""
        if self.subject is not None:
            return f"subject={self.subject!r}"
        if self.uid is not None:
            return f"pid={self.pid} uid={self.uid} gid={self.gid}"
        return f"{self.transport} connection #{self.id}"

    def identity(self) -> dict[str, object]:
        """Who this is, as structured fields for the JSON audit log."""
        return {
            "session": self.id,
            "transport": self.transport,
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "subject": self.subject,
        }
