"""Per-connection state that methods may read or change: who the caller is, and its options.

The connection creates one Session when a client connects and passes it with every line;
handlers receive it next to the daemon-wide Context. No I/O happens here: a connection
that can push messages (subscriptions) installs its own ``outbox``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs

from zeusd.logfmt import clip
from zeusd.stream.outbox import NoOutbox, Outbox

_ids = itertools.count(1)


@attrs.define(kw_only=True, eq=False)
class Session:
    """One caller as the core sees it: a connection, or an HTTP request."""

    #: "uds" or "tcp".
    transport: str
    #: Peer credentials (SO_PEERCRED) on Unix sockets; None on TCP or when unknown.
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    #: The peer's primary and supplementary groups (SO_PEERGROUPS), for --control-gids.
    groups: tuple[int, ...] = ()
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
        """Who this is, for log lines: the token subject and/or the peer's pid/uid.

        The subject is quoted clipped and escaped: it comes from a token, not from us.
        """
        peer = f"pid={self.pid} uid={self.uid} gid={self.gid}" if self.uid is not None else None
        if self.subject is not None:
            subject = f"subject='{clip(self.subject)}'"
            return subject if peer is None else f"{subject} {peer}"
        if peer is not None:
            return peer
        return f"{self.transport} connection #{self.id}"

    def identity(self) -> dict[str, object]:
        """Who this is, as structured fields for the JSON audit log."""
        return {
            "session": self.id,
            "transport": self.transport,
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "subject": None if self.subject is None else clip(self.subject),
        }

    #: Takes server-initiated samples (subscriptions) for this client.
    outbox: Outbox = attrs.field(factory=NoOutbox)
    #: This session's live subscriptions: id -> the function that ends it.
    subscriptions: dict[str, Callable[[], None]] = attrs.field(factory=dict)

    def end_subscriptions(self) -> None:
        """The connection is closing: stop every subscription of this session."""
        while self.subscriptions:
            _, end = self.subscriptions.popitem()
            end()
