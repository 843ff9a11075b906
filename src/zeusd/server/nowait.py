"""Handing bytes to a socket without waiting: no task, no scheduler round, no deadline.

trio's ``send_all`` always ends with a scheduler round, even when the socket takes every
byte at once, which it nearly always does for a reply of a few hundred bytes. A connection
first offers its bytes here; only what the socket does not take at once (its buffer is full)
is written the waiting way, with the client deadline.
"""

from __future__ import annotations

import os

import trio


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of *stream*, when bytes can be handed to it directly."""
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def send_nowait(sock: trio.socket.SocketType | None, data: bytes | bytearray) -> int:
    """Write what *sock* takes of *data* at once: the number of bytes (0: none, or no socket).

    Raises trio.ClosedResourceError once the socket is closed (its number may be another
    file's by now, so it is never written to) and trio.BrokenResourceError when the peer
    has gone.
    """
    if sock is None:
        return 0
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the socket is closed")
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc
