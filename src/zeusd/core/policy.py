"""Who may call what: the daemon's access settings, as the access gate reads them."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs


@attrs.frozen(kw_only=True)
class Policy:
    """The groups served, the token key and who may write; one per daemon."""

    #: The API groups this daemon serves (--enable, and what the node can serve).
    enabled_groups: tuple[str, ...]
    #: Set with --token-key: the key that signs session tokens.
    token_key: bytes | None = attrs.field(default=None, repr=False)
    #: Transports whose callers must authenticate before most methods (--token-key).
    token_transports: frozenset[str] = frozenset()
    #: Who may call gpu-control besides root (--control-uids/--control-gids); both empty:
    #: everyone who can reach the socket.
    control_uids: frozenset[int] = frozenset()
    control_gids: frozenset[int] = frozenset()
    #: Unix time in seconds, for token expiry; app.serve derives it from trio's clock, so
    #: tests can move it with a virtual clock.
    wall_clock: Callable[[], float] = time.time

    @property
    def auth_required(self) -> bool:
        return bool(self.token_transports)

    @property
    def restricts_control(self) -> bool:
        return bool(self.control_uids or self.control_gids)

    def requires_token(self, transport: str) -> bool:
        return transport in self.token_transports
