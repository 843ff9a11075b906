"""The Python client (zeusd.client) against a real simulated daemon and a few scripted peers."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from process_helpers import (
    DaemonProcess,
    run_zeusd,
    running_daemon,
    short_tempdir,
    write_sim_config,
)
from zeusd.client import (
    Address,
    AuthenticationRequiredError,
    DeviceError,
    InvalidParamsError,
    MethodNotFoundError,
    ZeusdClient,
    ZeusdConnectionError,
    ZeusdRpcError,
    ZeusdTimeoutError,
)

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    path = os.path.join(short_tempdir(), "zeusd.sock")
    with running_daemon(socket_path=path, sim_gpus=2) as d:
        yield d


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[ZeusdClient]:
    with ZeusdClient(daemon.socket_path, timeout=10) as c:
        yield c
        c.reset_power_limit([0, 1])


def test_typed_reads(client: ZeusdClient) -> None:
    """Each typed read returns its result keyed by integer GPU id."""
    found = client.discover()
    assert [g.id for g in found.gpus] == [0, 1]
    assert found.backend == "sim"
    assert client.get_power_limit_constraints([1])[1].max_power_limit_mw == 700_000
    assert client.get_persistence_mode() == {0: False, 1: False}
    assert set(client.get_power().power_mw) == {0, 1}
    assert client.get_cumulative_energy([0])[0] >= 0
    assert client.get_supported_memory_clocks([0]) == {0: [2619]}
    assert client.get_supported_graphics_clocks([0], memory_clock_mhz=2619)[0][-1] == 210
    assert client.time_ms() > 1_600_000_000_000
    assert any(m["name"] == "gpu.get_power" for m in client.rpc_discover()["methods"])


def test_blocking_write_then_read(client: ZeusdClient) -> None:
    """A blocking write returns the applied ids and the read sees the new value."""
    assert client.set_power_limit([0, 1], 300_000) == [0, 1]
    assert client.get_power_limit() == {0: 300_000, 1: 300_000}


def test_nonblocking_write_is_a_notification(client: ZeusdClient) -> None:
    """block=False returns None at once; a following read on the connection sees the write."""
    assert client.set_power_limit([1], 450_000, block=False) is None
    assert client.get_power_limit([1]) == {1: 450_000}


def test_error_carries_code_message_and_data(client: ZeusdClient) -> None:
    """An out-of-range value raises InvalidParamsError with the daemon's code and data."""
    with pytest.raises(InvalidParamsError) as info:
        client.set_power_limit([0], 5)
    assert info.value.code == -32602
    assert info.value.message == "Invalid params"
    assert info.value.data["param"] == "power_limit_mw"
    assert info.value.data["min"] == 200_000
    assert isinstance(info.value, ZeusdRpcError)


def test_unknown_method_and_generic_call(client: ZeusdClient) -> None:
    """call() reaches any method; an unknown one raises MethodNotFoundError."""
    assert client.call("gpu.get_power_limit", gpu_ids=[0]) == {"0": {"power_limit_mw": 700_000}}
    with pytest.raises(MethodNotFoundError):
        client.call("gpu.no_such_method")


def test_device_error_names_the_nvml_error() -> None:
    """A simulated NVML fault surfaces as DeviceError with the failing GPU's NVML error."""
    tmp = short_tempdir()
    config = write_sim_config(
        tmp, '[[gpu]]\n[[gpu]]\n[gpu.faults]\nset_power_limit = "NVML_ERROR_NO_PERMISSION"\n'
    )
    path = os.path.join(tmp, "z.sock")
    with running_daemon("--sim-config", config, socket_path=path), ZeusdClient(path) as c:
        with pytest.raises(DeviceError) as info:
            c.set_power_limit([0, 1], 300_000)
        assert info.value.nvml_errors() == {1: "NVML_ERROR_NO_PERMISSION"}
        assert info.value.data["succeeded"] == [0]


def test_from_env_unix_and_tcp() -> None:
    """from_env prefers ZEUSD_SOCK_PATH, falls back to ZEUSD_HOST_PORT."""
    with running_daemon("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0") as d:
        env = {"ZEUSD_HOST_PORT": f"127.0.0.1:{d.tcp_port}"}
        with ZeusdClient.from_env(environ=env) as c:
            assert c.address == Address(host="127.0.0.1", port=d.tcp_port)
            assert len(c.discover().gpus) == 4
    both = {"ZEUSD_SOCK_PATH": "/x.sock", "ZEUSD_HOST_PORT": "127.0.0.1:1"}
    assert ZeusdClient.from_env(environ=both).address == Address.unix("/x.sock")
    assert ZeusdClient.from_env(environ={}).address == Address.unix("/var/run/zeusd.sock")


def test_token_against_daemon_without_token_key(daemon: DaemonProcess) -> None:
    """A token sent to a daemon that cannot check tokens is a clear -32005, not ignored."""
    env = {"ZEUSD_SOCK_PATH": daemon.socket_path or "", "ZEUSD_TOKEN": "t0ken"}
    with pytest.raises(AuthenticationRequiredError) as info, ZeusdClient.from_env(environ=env) as c:
        c.get_power_limit([0])
    assert "--token-key" in info.value.data["reason"]


def test_token_from_env_authenticates_over_tcp() -> None:
    """ZEUSD_HOST_PORT + ZEUSD_TOKEN from 'zeusd token issue' unlock a token-locked TCP daemon."""
    directory = short_tempdir()
    key = os.path.join(directory, "token.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    issued = run_zeusd(
        "token", "issue", "--token-key", key, "--subject", "client-test",
        "--scopes", "gpu-read", "--expires", "1h",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key)
    with running_daemon(*args) as daemon:
        env = {
            "ZEUSD_HOST_PORT": f"127.0.0.1:{daemon.tcp_port}",
            "ZEUSD_TOKEN": issued.stdout.strip(),
        }
        with ZeusdClient.from_env(environ=env) as c:
            assert c.get_power_limit([0]) == {0: 700_000}
            assert c.call("session.whoami")["subject"] == "client-test"


def test_shared_between_threads(client: ZeusdClient) -> None:
    """Many threads on one client each get their own correct answers."""
    errors: list[BaseException] = []

    def work(gpu: int) -> None:
        try:
            for _ in range(30):
                assert set(client.get_power_limit([gpu])) == {gpu}
                assert client.get_power_limit_constraints([gpu])[gpu].min_power_limit_mw == 200_000
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_survives_daemon_restart() -> None:
    """After the daemon restarts, a read and a write both go through on a new connection."""
    path = os.path.join(short_tempdir(), "z.sock")
    with ZeusdClient(path, timeout=10) as c:
        with running_daemon(socket_path=path, sim_gpus=1):
            assert c.get_power_limit() == {0: 700_000}
        with running_daemon(socket_path=path, sim_gpus=1):
            assert c.set_power_limit([0], 250_000) == [0]
            assert c.get_power_limit() == {0: 250_000}


def test_connection_refused_is_a_connection_error() -> None:
    """No daemon at the path: ZeusdConnectionError naming the address."""
    path = os.path.join(short_tempdir(), "nobody.sock")
    with pytest.raises(ZeusdConnectionError, match="cannot connect"):
        ZeusdClient(path).time_ms()


# --- scripted peers: what happens when a connection breaks mid-call ---------------------------


class ScriptedPeer:
    """A Unix socket server whose every connection is handled by *script*; records lines."""

    def __init__(self, script: Callable[[socket.socket, list[dict[str, object]]], None]) -> None:
        self.path = os.path.join(short_tempdir(), "peer.sock")
        self.received: list[dict[str, object]] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(self.path)
        self._server.listen(8)
        self._script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                self._script(conn, self.received)

    def close(self) -> None:
        self._server.close()


def _read_request(conn: socket.socket, received: list[dict[str, object]]) -> dict[str, object]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    message: dict[str, object] = json.loads(data)
    received.append(message)
    return message


def _hang_up_on_first_connection() -> ScriptedPeer:
    connections = []

    def script(conn: socket.socket, received: list[dict[str, object]]) -> None:
        request = _read_request(conn, received)
        connections.append(conn)
        if len(connections) > 1:  # the first connection breaks before its reply
            reply = {"jsonrpc": "2.0", "result": {"timestamp_ms": 7}, "id": request["id"]}
            conn.sendall(json.dumps(reply).encode() + b"\n")

    return ScriptedPeer(script)


def test_read_is_retried_once_after_broken_connection() -> None:
    """A read whose connection breaks before the reply is sent again on a new connection."""
    peer = _hang_up_on_first_connection()
    try:
        with ZeusdClient(peer.path, timeout=5) as c:
            assert c.time_ms() == 7
        assert [m["method"] for m in peer.received] == ["time", "time"]
    finally:
        peer.close()


def test_write_is_never_resent() -> None:
    """A write whose connection breaks raises ZeusdConnectionError and was sent exactly once."""
    peer = _hang_up_on_first_connection()
    try:
        with ZeusdClient(peer.path, timeout=5) as c, pytest.raises(ZeusdConnectionError):
            c.set_power_limit([0], 300_000)
        assert [m["method"] for m in peer.received] == ["gpu.set_power_limit"]
    finally:
        peer.close()


def test_silent_peer_times_out() -> None:
    """No reply within the timeout raises ZeusdTimeoutError (and nothing hangs)."""

    def script(conn: socket.socket, received: list[dict[str, object]]) -> None:
        _read_request(conn, received)
        conn.recv(1)  # hold the connection open until the client gives up

    peer = ScriptedPeer(script)
    try:
        with ZeusdClient(peer.path, timeout=0.3) as c, pytest.raises(ZeusdTimeoutError):
            c.time_ms()
    finally:
        peer.close()


def _answering_peer(answers: dict[str, dict[str, object]]) -> ScriptedPeer:
    """A peer answering each method with the given reply member (``result`` or ``error``)."""

    def script(conn: socket.socket, received: list[dict[str, object]]) -> None:
        reader = conn.makefile("rb")
        for line in reader:
            request = json.loads(line)
            received.append(request)
            reply = {"jsonrpc": "2.0", "id": request["id"], **answers[str(request["method"])]}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        reader.close()

    return ScriptedPeer(script)


def test_token_is_sent_first_on_each_connection() -> None:
    """With a token, session.authenticate precedes the first request of a connection."""
    peer = _answering_peer(
        {
            "session.authenticate": {
                "result": {"subject": "alice", "scopes": [], "expires_at": None}
            },
            "time": {"result": {"timestamp_ms": 5}},
        }
    )
    try:
        with ZeusdClient(peer.path, token="s3cret") as c:
            assert c.time_ms() == 5
            assert c.time_ms() == 5
        assert [(m["method"], m.get("params")) for m in peer.received] == [
            ("session.authenticate", {"token": "s3cret"}),
            ("time", None),
            ("time", None),
        ]
    finally:
        peer.close()


def test_rejected_token_raises_authentication_error() -> None:
    """A -32005 answer to session.authenticate is raised, and nothing else is sent."""
    peer = _answering_peer(
        {"session.authenticate": {"error": {"code": -32005, "message": "Authentication required"}}}
    )
    try:
        with ZeusdClient(peer.path, token="bad") as c, pytest.raises(AuthenticationRequiredError):
            c.time_ms()
        assert [m["method"] for m in peer.received] == ["session.authenticate"]
    finally:
        peer.close()
