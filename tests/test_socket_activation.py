"""Socket activation: zeusd serving a socket passed by a launcher (systemd-socket-activate)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from process_helpers import ZEUSD, LineConnection, short_tempdir, with_state_dir
from zeusd.server.listeners import StartupError, inherited_listener

ACTIVATE = shutil.which("systemd-socket-activate")
needs_launcher = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate missing (Debian package 'systemd')"
)


def test_variables_for_another_process_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """LISTEN_FDS meant for another pid (e.g. our parent) is left alone."""
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert inherited_listener() is None
    assert os.environ["LISTEN_FDS"] == "1"


def test_more_than_one_socket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two passed sockets is a start-up error (zeusd serves one), and the variables are cleared."""
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    with pytest.raises(StartupError, match="exactly one"):
        inherited_listener()
    assert "LISTEN_FDS" not in os.environ


@contextmanager
def activated(listen: str, *zeusd_args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``systemd-socket-activate -l LISTEN zeusd ...``; yields once the launcher listens."""
    assert ACTIVATE is not None
    proc = subprocess.Popen(
        [
            ACTIVATE,
            "-l",
            listen,
            ZEUSD,
            "--gpu-backend",
            "sim",
            "--sim-gpus",
            "2",
            *with_state_dir(zeusd_args),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "Listening on ... as 3."
        assert b"Listening on" in line, line
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.process
@needs_launcher
def test_unix_socket_activation() -> None:
    """The first connection starts zeusd on the passed Unix socket; its file outlives zeusd."""
    path = os.path.join(short_tempdir(), "activated.sock")
    # The address flags would make zeusd bind elsewhere if it ignored the passed socket.
    decoy = os.path.join(short_tempdir(), "decoy.sock")
    with activated(path, "--socket-path", decoy) as proc:
        with LineConnection.unix(path, timeout=20) as conn:
            assert len(conn.result("discover")["gpus"]) == 2
            assert conn.result("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=300_000) == {
                "applied": [1]
            }
        with LineConnection.unix(path) as again:
            assert again.result("gpu.get_power_limit", gpu_ids=[1]) == {
                "1": {"power_limit_mw": 300_000}
            }
        assert not os.path.exists(decoy)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0  # the launcher exec'd zeusd, so this is zeusd's exit
    assert os.path.exists(path), "zeusd removed a socket file it did not create"


@pytest.mark.process
@needs_launcher
def test_tcp_socket_activation() -> None:
    """A passed TCP socket is served too (whatever --mode says)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with activated(f"127.0.0.1:{port}"), LineConnection.tcp(port, timeout=20) as conn:
        assert conn.result("time")["timestamp_ms"] > 0
        assert len(conn.result("discover")["gpus"]) == 2
