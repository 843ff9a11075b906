"""RLIMIT_NOFILE against --max-connections: raised at start, or fewer connections, never a
flood of EMFILE lines."""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from process_helpers import ZEUSD, running_daemon, short_tempdir
from zeusd.server import fdlimit

INF = resource.RLIM_INFINITY
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"


def test_enough_soft_limit_is_left_alone() -> None:
    """A soft limit that already fits is not touched."""
    assert fdlimit.fit(1024, 10, 4096, 4096) == fdlimit.Fit(None, 1024, None)
    assert fdlimit.fit(1024, 10, INF, INF) == fdlimit.Fit(None, 1024, None)


def test_soft_limit_is_raised_to_what_is_needed() -> None:
    """A low soft limit is raised to connections + open + headroom, under the hard limit."""
    need = 1024 + 10 + fdlimit.HEADROOM
    assert fdlimit.fit(1024, 10, 1024, 4096) == fdlimit.Fit(need, 1024, None)
    assert fdlimit.fit(1024, 10, 1024, INF) == fdlimit.Fit(need, 1024, None)


def test_low_hard_limit_serves_fewer_connections_with_one_warning() -> None:
    """Under a hard limit too low for --max-connections, fewer are served, saying why."""
    plan = fdlimit.fit(1024, 10, 256, 512)
    assert plan.soft == 512
    assert plan.max_connections == 512 - 10 - fdlimit.HEADROOM
    assert plan.warning is not None
    assert "serving at most 438 connections" in plan.warning
    assert "LimitNOFILE=" in plan.warning
    same = fdlimit.fit(1024, 10, 512, 512)
    assert (same.soft, same.max_connections) == (None, 438)


def test_no_room_for_one_connection_is_an_error() -> None:
    """If not even one connection fits, start-up fails naming the numbers."""
    with pytest.raises(fdlimit.FdLimitError, match="leaves no room"):
        fdlimit.fit(1024, 10, 70, 70)


def test_limit_that_cannot_be_raised_counts_as_hard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where setrlimit is forbidden (systemd's @resources filter), fewer are served."""

    def forbidden(which: int, limits: tuple[int, int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(fdlimit.resource, "getrlimit", lambda which: (256, 4096))
    monkeypatch.setattr(fdlimit.resource, "setrlimit", forbidden)
    monkeypatch.setattr(fdlimit, "open_descriptors", lambda: 10)
    fits, warning = fdlimit.apply(1024)
    assert fits == 256 - 10 - fdlimit.HEADROOM
    assert warning is not None
    assert f"serving at most {fits} connections" in warning


# --- the real process under a low limit ------------------------------------------------------


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


@contextmanager
def _open_many(path: str, count: int) -> Iterator[list[socket.socket]]:
    """*count* connections, each connect blocking until the daemon's backlog has room."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.connect(path)  # blocking: a full backlog waits instead of EAGAIN
            sock.settimeout(10)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _answers_time(sock: socket.socket) -> bool:
    try:
        sock.sendall(b'{"jsonrpc":"2.0","method":"time","id":1}\n')
        return b'"timestamp_ms"' in sock.recv(4096)
    except OSError:
        return False


_ACCEPT_TROUBLE = re.compile(r"EMFILE|Too many open files|accept|Traceback")


@pytest.mark.process
def test_low_soft_limit_is_raised_for_max_connections(tmp_dir: str) -> None:
    """Started with soft limit 64 (hard 4096), zeusd serves 300 connections at once."""
    path = os.path.join(tmp_dir, "z.sock")
    prefix = (PRLIMIT, "--nofile=64:4096", "--")
    with running_daemon("--max-connections", "300", socket_path=path, prefix=prefix) as daemon:
        soft, hard = _limits(daemon.proc.pid)
        assert 300 + fdlimit.HEADROOM <= soft <= hard == 4096
        with _open_many(path, 300) as socks:
            assert all(_answers_time(sock) for sock in socks)
        daemon.stop()
    assert not _ACCEPT_TROUBLE.findall(daemon.log), daemon.log[-3000:]


@pytest.mark.process
def test_low_hard_limit_lowers_the_connection_limit_quietly(tmp_dir: str) -> None:
    """At hard limit 128, one warning says how many connections fit; 300 clients then get
    no EMFILE flood: those beyond are refused, the others answered."""
    path = os.path.join(tmp_dir, "z.sock")
    prefix = (PRLIMIT, "--nofile=128:128", "--")
    with running_daemon("--max-connections", "1024", socket_path=path, prefix=prefix) as daemon:
        warning = re.search(r"serving at most (\d+) connections", daemon.log)
        assert warning, daemon.log
        fits = int(warning.group(1))
        assert 0 < fits < 128
        with _open_many(path, 300) as socks:
            time.sleep(3)  # time enough for a flood of EMFILE reports, if there is one
            answered = sum(_answers_time(sock) for sock in socks)
        daemon.stop()
    assert answered == fits
    assert daemon.log.count("serving at most") == 1
    assert not _ACCEPT_TROUBLE.findall(daemon.log), daemon.log[-3000:]


@pytest.mark.process
def test_hard_limit_without_room_refuses_to_start(tmp_dir: str) -> None:
    """With a hard limit of 40 descriptors zeusd does not start, and says why."""
    argv = [ZEUSD, "--gpu-backend", "sim", "--socket-path", os.path.join(tmp_dir, "z.sock")]
    argv += ["--rapl-root", "/nonexistent"]
    done = subprocess.run(
        [PRLIMIT, "--nofile=40:40", "--", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "leaves no room for connections" in done.stderr
    assert "listening on" not in done.stderr
