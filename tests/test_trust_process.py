"""Trust features of the real ``zeusd`` process, driven over its socket like a client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from process_helpers import (
    NOBODY,
    SOCAT,
    LineConnection,
    error_of,
    lines,
    parse_output,
    request,
    result_of,
    run_zeusd,
    running_daemon,
    short_tempdir,
)

pytestmark = pytest.mark.process

DEFAULT_MW = 700_000


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    path = short_tempdir()
    os.chmod(path, 0o755)  # another user's client must reach the socket inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sock(directory: str) -> str:
    return os.path.join(directory, "zeusd.sock")


def _other_user() -> tuple[int, int, dict[str, Any]]:
    """A uid/gid that is not root (nobody when we are root) and how to run a child as it."""
    if os.geteuid() == 0:
        return NOBODY, NOBODY, {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    return os.getuid(), os.getgid(), {}


def _exchange_as(path: str, data: bytes, run_as: dict[str, Any]) -> list[Any]:
    done = subprocess.run(
        [SOCAT, "-t", "2", "-", f"UNIX-CONNECT:{path}"],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
        **run_as,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return parse_output(done.stdout)


def _write_key(directory: str, mode: int = 0o600) -> str:
    path = os.path.join(directory, "token.key")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, mode)
    return path


_WRITE = request("gpu.set_power_limit", "w", gpu_ids=[0], power_limit_mw=300_000)
_READ = request("gpu.get_power_limit", "r", gpu_ids=[0])
_WHOAMI = request("session.whoami", "me")


# --- access policy ----------------------------------------------------------------------


def test_control_uids_refuse_other_users(tmp_dir: str) -> None:
    """With --control-uids, another user's write is -32002 saying who may; reads stay open."""
    uid, _, run_as = _other_user()
    path = _sock(tmp_dir)
    with running_daemon("--control-uids", "12345,12346", socket_path=path) as daemon:
        replies = {r["id"]: r for r in _exchange_as(path, lines(_WRITE, _READ, _WHOAMI), run_as)}
        error = error_of(replies["w"], -32002)
        assert "uids 12345, 12346" in error["data"]["reason"]
        assert f"uid {uid}" in error["data"]["reason"]
        assert result_of(replies["r"]) == {"0": {"power_limit_mw": DEFAULT_MW}}
        me = result_of(replies["me"])
        assert me["uid"] == uid
        assert me["allowed_groups"] == ["gpu-read"]
        if os.geteuid() == 0:  # root always may
            with daemon.connect() as root:
                assert result_of(root.call("gpu.reset_power_limit", gpu_ids=[0])) == {
                    "applied": [0]
                }


@pytest.mark.parametrize("flag", ["--control-uids", "--control-gids"])
def test_listed_user_or_group_may_write(tmp_dir: str, flag: str) -> None:
    """A uid in --control-uids, or a member of a gid in --control-gids, may write."""
    uid, gid, run_as = _other_user()
    path = _sock(tmp_dir)
    listed = str(uid if flag == "--control-uids" else gid)
    with running_daemon(flag, f"1,{listed}", socket_path=path):
        replies = {r["id"]: r for r in _exchange_as(path, lines(_WRITE, _WHOAMI), run_as)}
        assert result_of(replies["w"]) == {"applied": [0]}
        assert result_of(replies["me"])["allowed_groups"] == ["gpu-control", "gpu-read"]


# --- tokens -----------------------------------------------------------------------------


def test_token_issue_and_tcp_authentication(tmp_dir: str) -> None:
    """A token from 'zeusd token issue' unlocks a TCP connection for its scopes."""
    key = _write_key(tmp_dir)
    issued = run_zeusd(
        "token", "issue", "--token-key", key, "--subject", "ci-job",
        "--scopes", "gpu-control,gpu-read", "--expires", "1h",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.count(".") == 2
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key)
    with running_daemon(*args) as daemon, daemon.connect() as conn:
        assert result_of(conn.call("discover"))["auth_required"] is True
        error_of(conn.call("gpu.get_power_limit"), -32005)
        error_of(conn.call("session.authenticate", token=token + "x"), -32005)
        granted = result_of(conn.call("session.authenticate", token=token))
        assert granted["subject"] == "ci-job"
        assert granted["scopes"] == ["gpu-control", "gpu-read"]
        assert 3500 < granted["expires_at"] - time.time() <= 3600
        assert result_of(conn.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000))
        me = result_of(conn.call("session.whoami"))
        assert me["subject"] == "ci-job"
        assert me["pid"] is None
    assert "ci-job" in daemon.log


def _issue(key: str, scopes: str, expires: str) -> str:
    issued = run_zeusd(
        "token", "issue", "--token-key", key, "--subject", "job", "--scopes", scopes,
        "--expires", expires,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return issued.stdout.strip()


def test_lone_surrogate_token_is_auth_required_without_traceback(tmp_dir: str) -> None:
    """100 authenticates with the token "\\ud800" over TCP: 100 x -32005, no traceback."""
    key = _write_key(tmp_dir)
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key)
    with running_daemon(*args) as daemon:
        line = b'{"jsonrpc":"2.0","method":"session.authenticate","params":{"token":"\\ud800"},'
        data = b"".join(line + b'"id":%d}\n' % i for i in range(100))
        replies = daemon.exchange(data)
        assert len(replies) == 100
        assert all(error_of(r, -32005) for r in replies)
        daemon.stop()
        refused = [ln for ln in daemon.log.splitlines() if "authentication refused" in ln]
        assert "Traceback" not in daemon.log
        assert " ERROR " not in daemon.log
        assert len(refused) == 100
        assert max(len(ln) for ln in refused) < 300


def test_token_cannot_widen_a_unix_peer(tmp_dir: str) -> None:
    """Another user outside --control-uids, with a gpu-control token, still gets -32002."""
    uid, _, run_as = _other_user()
    key = _write_key(tmp_dir)
    token = _issue(key, "gpu-control,gpu-read", "1h")
    path = _sock(tmp_dir)
    with running_daemon("--control-uids", "12345", "--token-key", key, socket_path=path) as d:
        auth = request("session.authenticate", "a", token=token)
        replies = {r["id"]: r for r in _exchange_as(path, lines(auth, _WRITE, _WHOAMI), run_as)}
        assert result_of(replies["a"])["scopes"] == ["gpu-control", "gpu-read"]
        assert f"uid {uid}" in error_of(replies["w"], -32002)["data"]["reason"]
        assert result_of(replies["me"])["allowed_groups"] == ["gpu-read"]
        with d.connect() as root:
            assert result_of(root.call("gpu.get_power_limit", gpu_ids=[0])) == {
                "0": {"power_limit_mw": DEFAULT_MW}
            }


def test_expired_token_relocks_a_unix_session(tmp_dir: str) -> None:
    """On the Unix socket, once the token's exp passes the session is -32005, root too."""
    key = _write_key(tmp_dir)
    path = _sock(tmp_dir)
    with running_daemon("--token-key", key, socket_path=path) as daemon, daemon.connect() as c:
        token = _issue(key, "gpu-control,gpu-read", "4s")
        expires_at = result_of(c.call("session.authenticate", token=token))["expires_at"]
        result_of(c.call("gpu.get_power_limit", gpu_ids=[0]))
        time.sleep(max(0.0, expires_at - time.time()) + 0.5)
        error_of(c.call("gpu.get_power_limit", gpu_ids=[0]), -32005)
        error_of(c.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000), -32005)


def _try_authenticate(port: int, token: str) -> bool:
    """Whether a fresh TCP connection gets to authenticate (False: closed or reset)."""
    try:
        with LineConnection.tcp(port) as conn:
            conn.send(request("session.authenticate", 1, token=token))
            line = conn.read_line()
    except OSError:
        return False
    return bool(line) and "result" in json.loads(line)


def test_idle_unauthenticated_sockets_do_not_lock_out_a_token_holder(tmp_dir: str) -> None:
    """50 idle TCP sockets at --max-connections 50 hold their slots only --auth-timeout long."""
    key = _write_key(tmp_dir)
    token = _issue(key, "gpu-read", "1h")
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key)
    args += ("--max-connections", "50", "--auth-timeout", "2")
    with running_daemon(*args) as daemon:
        port = daemon.tcp_port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
        try:
            started = time.monotonic()
            assert not _try_authenticate(port, token)  # all 50 slots are taken: refused
            while not _try_authenticate(port, token):
                assert time.monotonic() - started < 15, "still locked out"
                time.sleep(0.1)
            waited = time.monotonic() - started
            assert all(sock.recv(1) == b"" for sock in idle)  # the daemon closed them
        finally:
            for sock in idle:
                sock.close()
    assert waited < 12
    closing = [ln for ln in daemon.log.splitlines() if "not authenticated within 2 s" in ln]
    assert 1 <= len(closing) <= 5  # 50 closed, reported at most once a second


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_readable_key_is_refused(tmp_dir: str, mode: int) -> None:
    """Daemon and token command both refuse a key group or others can read."""
    key = _write_key(tmp_dir, mode)
    started = run_zeusd("--gpu-backend", "sim", "--mode", "tcp", "--token-key", key)
    assert started.returncode == 1
    assert "chmod 600" in started.stderr
    issued = run_zeusd(
        "token", "issue", "--token-key", key, "--subject", "a", "--scopes", "gpu-read",
        "--expires", "never",
    )  # fmt: skip
    assert issued.returncode == 1
    assert issued.stdout == ""
    assert "chmod 600" in issued.stderr


def test_token_issue_rejects_unknown_scope(tmp_dir: str) -> None:
    """An unknown API group in --scopes is a usage error."""
    key = _write_key(tmp_dir)
    done = run_zeusd(
        "token", "issue", "--token-key", key, "--subject", "a", "--scopes", "root",
        "--expires", "1h",
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown API group 'root'" in done.stderr


def test_non_loopback_tcp_needs_auth_or_opt_in(tmp_dir: str) -> None:
    """Binding 0.0.0.0 needs --token-key or --allow-insecure-tcp."""
    args = ("--gpu-backend", "sim", "--mode", "tcp", "--tcp-bind-address", "0.0.0.0:0")
    refused = run_zeusd(*args)
    assert refused.returncode == 2
    assert "--allow-insecure-tcp" in refused.stderr
    with running_daemon(*args[2:], "--allow-insecure-tcp") as daemon:
        assert daemon.address.startswith("tcp:0.0.0.0:")
    with running_daemon(*args[2:], "--token-key", _write_key(tmp_dir)) as daemon:
        assert daemon.address.startswith("tcp:0.0.0.0:")


# --- restore and audit ------------------------------------------------------------------


def test_crashed_client_settings_are_restored(tmp_dir: str) -> None:
    """A restore_on_close client killed with SIGKILL gets its GPU changes undone."""
    path = _sock(tmp_dir)
    with running_daemon(socket_path=path) as daemon:
        client = subprocess.Popen(
            [SOCAT, "-", f"UNIX-CONNECT:{path}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert client.stdin is not None
        assert client.stdout is not None
        client.stdin.write(lines(request("session.set_restore_on_close", 1, enabled=True), _WRITE))
        client.stdin.flush()
        assert [json.loads(client.stdout.readline())["id"] for _ in range(2)] == [1, "w"]
        with daemon.connect() as watcher:
            assert result_of(watcher.call("gpu.get_power_limit", gpu_ids=[0])) == {
                "0": {"power_limit_mw": 300_000}
            }
            client.send_signal(signal.SIGKILL)
            client.wait()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                limit = result_of(watcher.call("gpu.get_power_limit", gpu_ids=[0]))
                if limit["0"]["power_limit_mw"] == DEFAULT_MW:
                    break
                time.sleep(0.05)
            assert limit == {"0": {"power_limit_mw": DEFAULT_MW}}
        client.stdin.close()
        client.stdout.close()
    assert "power_limit restored to 700000" in daemon.log


def test_restore_on_exit_logs_each_restore(tmp_dir: str) -> None:
    """--restore-on-exit restores what was changed when the daemon is stopped."""
    path = _sock(tmp_dir)
    with running_daemon("--restore-on-exit", socket_path=path) as daemon:
        daemon.exchange(lines(_WRITE))
    assert daemon.proc.returncode == 0
    assert "GPU 0: power_limit restored to 700000 (daemon exiting)" in daemon.log


def test_json_log_with_audit_record(tmp_dir: str) -> None:
    """--log-format json writes one JSON object per line, audit fields included."""
    path = _sock(tmp_dir)
    with running_daemon("--log-format", "json", socket_path=path) as daemon:
        daemon.exchange(lines(_WRITE, _READ))
    entries = [json.loads(line) for line in daemon.log.splitlines() if line.strip()]
    assert any("listening on" in e["message"] for e in entries)
    audits = [e["audit"] for e in entries if "audit" in e]
    assert len(audits) == 1
    audit = audits[0]
    assert audit["method"] == "gpu.set_power_limit"
    assert audit["uid"] == os.getuid()
    assert isinstance(audit["pid"], int)
    assert audit["gpus"] == {"0": "ok"}
    assert audit["status"] == "ok"
    assert audit["duration_ms"] >= 0


# --- limits -----------------------------------------------------------------------------


def _closed_without_reply(conn: LineConnection) -> bool:
    try:
        return conn.read_line() == b""
    except ConnectionResetError:
        return True


def test_connection_limit_deadline_and_batch_cap(tmp_dir: str) -> None:
    """--max-connections refuses the extra one; a stalled line frees its slot; big batches fail."""
    path = _sock(tmp_dir)
    args = ("--max-connections", "2", "--client-timeout", "1", "--max-batch", "2")
    with running_daemon(*args, socket_path=path) as daemon:
        with daemon.connect() as first, daemon.connect() as second:
            assert result_of(first.call("time"))
            assert result_of(second.call("time"))
            with daemon.connect() as third:
                third.send(request("time", 1))
                assert _closed_without_reply(third)
            error = error_of(_batch(second, 3), -32600)
            assert "at most 2" in error["data"]
            first.send_raw(b'{"jsonrpc": "2.0", "method": "ti')
            stalled = first.read()  # within the 5 s socket timeout, after about 1 s
            assert "not finished within 1 s" in error_of(stalled, -32700)["data"]
            assert _closed_without_reply(first)
            # The stalled client's slot is free again.
            deadline = time.monotonic() + 10
            while True:
                with daemon.connect() as fourth:
                    try:
                        fourth.send(request("time", 4))
                        line = fourth.read_line()
                    except ConnectionResetError:  # refused while the slot was still taken
                        line = b""
                if line or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert line
        # The log is read by a thread: wait for the line rather than race it.
        daemon.wait_for_log("line not finished", timeout=10)
        assert "refusing connections (--max-connections): 2 are open already" in daemon.log


def _batch(conn: LineConnection, size: int) -> Any:
    conn.send_raw(json.dumps([request("time", i) for i in range(size)]).encode() + b"\n")
    return conn.read()
