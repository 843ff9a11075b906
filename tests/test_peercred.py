"""Reading a Unix-socket peer's credentials."""

from __future__ import annotations

import os
import socket

from zeusd.server.peercred import peer_cred


def test_peer_credentials_of_a_unix_socket() -> None:
    """pid, uid, gid and every group of the peer (here: this process) are read."""
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        cred = peer_cred(left)
    assert cred is not None
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert set(cred.groups) == {os.getgid(), *os.getgroups()}


def test_tcp_socket_has_no_credentials() -> None:
    """A TCP peer carries no credentials."""
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        accepted, _ = server.accept()
        with accepted:
            assert peer_cred(accepted) is None
