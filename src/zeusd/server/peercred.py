"""Who is on the other end of a Unix socket, as the kernel recorded it at connect time.

The groups come from ``SO_PEERGROUPS`` (Linux 4.13+): the peer's supplementary groups as they
were when it connected. CPython's ``getsockopt`` takes at most 1,024 bytes (256 groups); a
peer with more makes the kernel answer ``ERANGE`` with the size it needs, and the call is
repeated through libc with a buffer of that size. Only where the kernel cannot say at all
(``ENOPROTOOPT``: an older kernel) does the user database stand in (:func:`database_groups`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import pwd
import socket
import struct

import attrs

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Linux's SO_PEERGROUPS (4.13+); Python's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: The largest buffer CPython's socket.getsockopt accepts.
GETSOCKOPT_MAX = 1024
#: Linux's NGROUPS_MAX: no process can have more supplementary groups.
NGROUPS_MAX = 65536


@attrs.frozen
class PeerCred:
    pid: int
    uid: int
    gid: int
    #: Primary and supplementary groups (see the module docstring for where they come from).
    groups: tuple[int, ...]
    #: False where the kernel cannot report groups: then *groups* is the primary one only,
    #: and :func:`database_groups` says what else the account has.
    groups_from_kernel: bool = True


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
    try:
        supplementary = peer_groups(sock)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            log.warning("cannot read the peer's groups (uid %d): %s; primary group only", uid, exc)
            return PeerCred(pid, uid, gid, (gid,))
        # The kernel predates SO_PEERGROUPS: the caller asks the user database (which may
        # block on NSS, so not here on the event loop).
        return PeerCred(pid, uid, gid, (gid,), groups_from_kernel=False)
    return PeerCred(pid, uid, gid, tuple(sorted({gid, *supplementary})))


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """SO_PEERGROUPS, whatever the number of groups. Raises OSError (ENOPROTOOPT: unknown)."""
    try:
        packed = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GETSOCKOPT_MAX)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            raise
        packed = _getsockopt_libc(sock.fileno(), SO_PEERGROUPS, 4 * NGROUPS_MAX)
    return struct.unpack(f"{len(packed) // 4}I", packed[: len(packed) // 4 * 4])


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _getsockopt_libc(fd: int, option: int, size: int) -> bytes:
    """getsockopt(2) through libc, for answers larger than CPython lets us ask for."""
    libc = _libc()
    buffer = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if libc.getsockopt(fd, socket.SOL_SOCKET, option, buffer, ctypes.byref(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return buffer.raw[: length.value]


def database_groups(uid: int, gid: int) -> tuple[int, ...]:
    """The groups the user database gives *uid* (its login groups), plus *gid*.

    The stand-in where the kernel cannot report a peer's groups. It is what the admin granted
    the account, so it never gives a uid a group it was not given. ``/proc/PID/status`` is not
    used: the pid may have been reused by another process since the peer connected.
    """
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = os.getgrouplist(name, gid)
    except (KeyError, OSError) as exc:
        log.warning("uid %d: no groups from the user database (%s); primary group only", uid, exc)
        return (gid,)
    return tuple(sorted({gid, *groups}))
