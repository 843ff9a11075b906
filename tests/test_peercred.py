"""Reading a Unix-socket peer's credentials."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zeusd.server.peercred import GETSOCKOPT_MAX, SO_PEERGROUPS, database_groups, peer_cred


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


class _FakeSocket:
    """A Unix socket whose SO_PEERGROUPS fails with *errno_*, for the fallback paths."""

    family = socket.AF_UNIX

    def __init__(self, real: socket.socket, errno_: int) -> None:
        self._real = real
        self._errno = errno_

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        if option == SO_PEERGROUPS:
            raise OSError(self._errno, os.strerror(self._errno))
        return self._real.getsockopt(level, option, buflen)

    def fileno(self) -> int:
        return self._real.fileno()


def test_peergroups_buffer_is_one_cpython_accepts() -> None:
    """The first SO_PEERGROUPS call asks for at most 1,024 bytes, which CPython allows."""
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        packed = left.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GETSOCKOPT_MAX)
        assert len(packed) % 4 == 0
        with pytest.raises(OSError, match="buflen out of range"):
            left.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GETSOCKOPT_MAX + 1)


def test_old_kernel_falls_back_to_the_user_database() -> None:
    """ENOPROTOOPT (no SO_PEERGROUPS) says so; the groups then come from the user database."""
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        cred = peer_cred(_FakeSocket(left, errno.ENOPROTOOPT))  # type: ignore[arg-type]
    assert cred is not None
    assert not cred.groups_from_kernel
    assert cred.groups == (os.getgid(),)
    name = pwd.getpwuid(os.getuid()).pw_name
    assert set(database_groups(os.getuid(), os.getgid())) == {
        os.getgid(),
        *os.getgrouplist(name, os.getgid()),
    }


def test_unknown_uid_gets_only_its_primary_group() -> None:
    """A uid the user database does not know gets no groups beyond its primary one."""
    unknown = next(uid for uid in range(40_000, 60_000) if not _has_passwd(uid))
    assert database_groups(unknown, 12345) == (12345,)


def test_other_failures_keep_the_primary_group_only() -> None:
    """Any other SO_PEERGROUPS failure grants no supplementary group."""
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        cred = peer_cred(_FakeSocket(left, errno.EINVAL))  # type: ignore[arg-type]
    assert cred is not None
    assert cred.groups == (os.getgid(),)
    assert cred.groups_from_kernel


def _has_passwd(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="setting a child's groups needs root")
def test_more_groups_than_cpython_buffer_holds(tmp_path: Path) -> None:
    """A peer in 300 groups (over CPython's 256-group buffer) has every one of them read."""
    groups = list(range(50_000, 50_300))
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        child = subprocess.Popen(
            [sys.executable, "-c", _CONNECT, path],
            extra_groups=groups,
            stdin=subprocess.PIPE,
        )
        try:
            accepted, _ = server.accept()
            with accepted:
                cred = peer_cred(accepted)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
    assert cred is not None
    assert cred.groups_from_kernel
    assert set(cred.groups) == {os.getgid(), *groups}


_CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(sys.argv[1])\n"
    "sys.stdin.read()\n"
)
