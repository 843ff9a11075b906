"""Which open connections' clients have already hung up, asked only at --max-connections.

A client that connects, closes and connects again can arrive before the daemon has read
the first connection's end; counted, that dead connection would get the new one refused.
Every open socket is registered with one ``poll`` object (registering is O(1)); at the
limit, one ``poll(0)`` call names the sockets whose peer has shut down (``POLLRDHUP``) or
that failed, and a ``MSG_PEEK`` keeps those that still hold unread bytes (a request whose
sender waits for the reply after a half-close). A socket already closed by its connection,
which is on its way out, does not count either (``POLLNVAL``, or its number taken by a newer
connection). Neither does one whose socket object is closed already: its number may have
been reused, by any file the process opens, so polling that number would ask about another
file.
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Generic, Protocol, TypeVar

Owner = TypeVar("Owner")

_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
_HUNG_UP = _POLLRDHUP | select.POLLHUP | select.POLLERR


class _Socket(Protocol):
    def fileno(self) -> int: ...


class Hangups(Generic[Owner]):
    def __init__(self) -> None:
        self._poll = select.poll()
        self._owners: dict[int, Owner] = {}
        #: The socket each watched number belonged to when it was added (-1 once closed).
        self._sockets: dict[int, _Socket] = {}
        #: Owners whose socket was closed and its number reused before they left.
        self._closed: list[Owner] = []

    def add(self, sock: _Socket, owner: Owner) -> int:
        """Watch *sock* for *owner*; returns its number, for :meth:`discard`."""
        fd = sock.fileno()
        old = self._owners.get(fd)
        if old is not None:
            self._closed.append(old)
        self._poll.register(fd, _POLLRDHUP)
        self._owners[fd] = owner
        self._sockets[fd] = sock
        return fd

    def discard(self, fd: int, owner: Owner) -> None:
        """Stop watching *fd*, if *owner* still has it (the number may have been reused)."""
        if self._owners.get(fd) is owner:
            del self._owners[fd]
            del self._sockets[fd]
            self._poll.unregister(fd)

    def hung_up(self) -> list[Owner]:
        """Owners whose client has gone with nothing left unread; they are no longer watched."""
        gone, self._closed = self._closed, []
        for fd, sock in list(self._sockets.items()):
            if sock.fileno() != fd:  # closed by its connection, which has not left yet
                gone.append(self._owners[fd])
                self.discard(fd, self._owners[fd])
        for fd, events in self._poll.poll(0):
            owner = self._owners.get(fd)
            if owner is None:
                continue
            if events & select.POLLNVAL or (events & _HUNG_UP and not _has_unread(fd)):
                gone.append(owner)
                self.discard(fd, owner)
        return gone


def _has_unread(fd: int) -> bool:
    sock = socket.socket(fileno=fd)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True  # no end seen after all: still a live connection
    except OSError as exc:
        return exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)
    finally:
        sock.detach()
