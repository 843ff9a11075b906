"""Who is on the other end of a Unix socket, as the kernel recorded it at connect time."""

from __future__ import annotations

import logging
import socket
import struct

import attrs

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Linux's SO_PEERGROUPS (4.13+); Python's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS = 1024


@attrs.frozen
class PeerCred:
    pid: int
    uid: int
    gid: int
    #: Primary and supplementary groups; just the primary one where the kernel cannot say.
    groups: tuple[int, ...]


def peer_cred(sock: socket.socket) -> PeerCred | None:
    """The peer's credentials, or None if *sock* is not a connected Unix socket."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        log.warning("cannot read the peer's credentials: %s", exc)
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    groups = {gid}
    try:
        packed = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        groups.update(struct.unpack(f"{len(packed) // 4}I", packed))
    except OSError as exc:
        # Old kernel, or more groups than we asked room for: only the primary group counts.
        log.debug("SO_PEERGROUPS unavailable: %s", exc)
    return PeerCred(pid, uid, gid, tuple(sorted(groups)))
