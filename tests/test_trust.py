"""Sessions and trust against an in-process daemon, driven over its socket like a client."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd import tokens
from zeusd.sim import default_sim_gpus

KEY = b"0123456789abcdef0123456789abcdef"
DEFAULT_MW = 700_000


class Opened:
    """Daemons and clients a test opened, all closed at its end."""

    def __init__(self, nursery: trio.Nursery, sock_dir: str) -> None:
        self._nursery = nursery
        self._dir = sock_dir
        self.daemons: list[SimDaemon] = []
        self.clients: list[LineClient] = []

    async def daemon(self, gpus: int = 4, **config: Any) -> SimDaemon:
        daemon = await start_sim_daemon(self._nursery, default_sim_gpus(gpus), self._dir, **config)
        self.daemons.append(daemon)
        return daemon

    async def tcp_daemon(self, **config: Any) -> SimDaemon:
        return await self.daemon(2, mode="tcp", tcp_port=0, **config)

    async def connect(self, daemon: SimDaemon) -> LineClient:
        if daemon.running.address.startswith("tcp:"):
            port = int(daemon.running.address.rsplit(":", 1)[1])
            client = LineClient(await trio.open_tcp_stream("127.0.0.1", port))
        else:
            client = await daemon.connect()
        self.clients.append(client)
        return client


@pytest.fixture
async def opened(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[Opened]:
    tracked = Opened(nursery, sock_dir)
    yield tracked
    for client in tracked.clients:
        await client.aclose()
    for daemon in tracked.daemons:
        daemon.running.server.stop(force=True)


def _code(response: dict[str, Any]) -> int:
    assert "error" in response, response
    code = response["error"]["code"]
    assert isinstance(code, int)
    return code


async def _read_until_hang_up(client: LineClient, timeout: float = 20.0) -> list[bytes]:
    """Lines read until the daemon hangs up (EOF, or a reset: our bytes were left unread)."""
    seen = []
    try:
        while line := await client.read_line(timeout=timeout):
            seen.append(line)
    except trio.BrokenResourceError:
        pass
    return seen


async def _eventually(check: Any, timeout: float = 10.0) -> None:
    """Poll *check* until true; fail after *timeout* (a wide margin, not a measurement)."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


# --- identity ---------------------------------------------------------------------------


async def test_whoami_reports_peer_credentials(client: LineClient) -> None:
    """On the Unix socket the daemon knows our pid, uid and gid from SO_PEERCRED."""
    me = await client.result("session.whoami")
    assert me == {
        "transport": "uds",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "subject": None,
        "allowed_groups": ["gpu-control", "gpu-read"],
        "restore_on_close": False,
    }


async def test_authenticate_without_token_key_is_refused(client: LineClient) -> None:
    """Without --token-key there is nothing to check a token against: -32005."""
    response = await client.call("session.authenticate", {"token": "x"})
    assert _code(response) == -32005
    assert "--token-key" in response["error"]["data"]["reason"]


# --- TCP tokens -------------------------------------------------------------------------


async def test_tcp_requires_authentication(opened: Opened) -> None:
    """Before authenticating only discover, time, rpc.discover and authenticate answer."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    found = await client.result("discover")
    assert found["auth_required"] is True
    await client.result("time")
    await client.result("rpc.discover")
    for method, params in [
        ("gpu.get_power", None),
        ("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000}),
        ("session.whoami", None),
        ("session.set_restore_on_close", {"enabled": True}),
    ]:
        assert _code(await client.call(method, params)) == -32005, method
    assert daemon.sim.devices[0].power_limit_mw == DEFAULT_MW


async def test_token_scopes_limit_methods(opened: Opened) -> None:
    """A gpu-read token reads but gets -32002 for a write, naming what it grants."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    token = tokens.issue(KEY, "dash", ["gpu-read"], 3600)
    granted = await client.result("session.authenticate", {"token": token})
    assert granted["subject"] == "dash"
    assert granted["scopes"] == ["gpu-read"]
    assert granted["expires_at"] > time.time()
    assert "0" in await client.result("gpu.get_power_limit", {"gpu_ids": [0]})
    refused = await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    assert _code(refused) == -32002
    assert "gpu-read" in refused["error"]["data"]["reason"]
    me = await client.result("session.whoami")
    assert me["transport"] == "tcp"
    assert (me["pid"], me["uid"], me["gid"]) == (None, None, None)
    assert me["subject"] == "dash"
    assert me["allowed_groups"] == ["gpu-read"]


async def test_control_token_writes(opened: Opened) -> None:
    """A gpu-control token may write."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    token = tokens.issue(KEY, "zeus", ["gpu-control", "gpu-read"], None)
    assert (await client.result("session.authenticate", {"token": token}))["expires_at"] is None
    await client.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    assert daemon.sim.devices[0].power_limit_mw == 300_000


@pytest.mark.parametrize(
    "token",
    [
        tokens.issue(KEY, "old", ["gpu-control"], 60, now=time.time() - 3600),
        tokens.issue(b"another key, just as long as ours", "x", ["gpu-control"], None),
        "garbage",
    ],
)
async def test_bad_token_is_refused(opened: Opened, token: str) -> None:
    """An expired, foreign or malformed token is -32005 and leaves the session locked."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    assert _code(await client.call("session.authenticate", {"token": token})) == -32005
    assert _code(await client.call("gpu.get_power")) == -32005


async def test_token_expiring_mid_session_locks_it(opened: Opened) -> None:
    """Once the token expires, the session answers -32005 again."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    token = tokens.issue(KEY, "short", ["gpu-read"], 3600, now=time.time() - 3600 + 2)
    await client.result("session.authenticate", {"token": token})
    await trio.sleep(2.5)
    response = await client.call("gpu.get_power")
    assert _code(response) == -32005
    assert "expired" in response["error"]["data"]["reason"]


@pytest.mark.parametrize("mode", ["uds", "tcp"])
async def test_expiry_relocks_unix_and_tcp_sessions(
    opened: Opened, mock_clock: trio.testing.MockClock, mode: str
) -> None:
    """Past the token's exp (virtual clock), the session is -32005 on UDS (root too) and TCP."""
    mock_clock.rate = 1
    if mode == "tcp":
        daemon = await opened.tcp_daemon(token_key=KEY)
    else:
        daemon = await opened.daemon(2, token_key=KEY)
    client = await opened.connect(daemon)
    token = tokens.issue(KEY, "short", ["gpu-read", "gpu-control"], 3600)
    await client.result("session.authenticate", {"token": token})
    assert set(await client.result("gpu.get_power_limit", {"gpu_ids": [0]})) == {"0"}
    mock_clock.jump(3600)
    for method, params in [
        ("gpu.get_power_limit", {"gpu_ids": [0]}),
        ("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000}),
        ("session.whoami", None),
    ]:
        response = await client.call(method, params)
        assert _code(response) == -32005, (method, response)
        assert "expired" in response["error"]["data"]["reason"]
    assert daemon.sim.devices[0].power_limit_mw == DEFAULT_MW
    fresh = tokens.issue(KEY, "again", ["gpu-read"], 7200)
    await client.result("session.authenticate", {"token": fresh})
    assert set(await client.result("gpu.get_power_limit", {"gpu_ids": [0]})) == {"0"}


@pytest.mark.parametrize(
    "token",
    ["\ud800", "", 5, None, ["x"], "not a jwt at all", "a.b.c\nINFO zeusd.audit: forged"],
)
async def test_token_that_is_no_jwt_is_auth_required(
    opened: Opened, caplog: pytest.LogCaptureFixture, token: object
) -> None:
    """Any non-JWT token is -32005 with one short warning, never -32603 or a traceback."""
    daemon = await opened.tcp_daemon(token_key=KEY)
    client = await opened.connect(daemon)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            response = await client.call("session.authenticate", {"token": token})
            assert _code(response) == -32005, response
    refused = [r for r in caplog.records if "authentication refused" in r.getMessage()]
    assert len(refused) == 3
    assert all(r.exc_info is None and len(r.getMessage()) < 300 for r in refused)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_unauthenticated_tcp_connection_is_closed_in_time(
    opened: Opened, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Where a token is required, a connection not authenticated in --auth-timeout is closed;
    an authenticated one, and the Unix socket's, are not."""
    mock_clock.rate = 1
    daemon = await opened.tcp_daemon(token_key=KEY, auth_timeout=10.0)
    idle = await opened.connect(daemon)
    talking = await opened.connect(daemon)  # discover and time do not count as logging in
    authenticated = await opened.connect(daemon)
    token = tokens.issue(KEY, "t", ["gpu-read"], 7200)
    await authenticated.result("session.authenticate", {"token": token})
    await talking.result("discover")
    uds = await opened.daemon(1, token_key=KEY, auth_timeout=10.0)
    local = await opened.connect(uds)
    await local.result("time")
    mock_clock.jump(9.5)
    await talking.result("time")
    mock_clock.jump(1.0)
    assert await _read_until_hang_up(idle) == []
    assert await _read_until_hang_up(talking) == []
    await authenticated.result("time")
    await local.result("time")
    closed = [r for r in caplog.records if "not authenticated within 10 s" in r.getMessage()]
    assert 1 <= len(closed) <= 2  # one per second at most: the second may be counted


# --- limits -----------------------------------------------------------------------------


async def test_batch_over_limit_is_one_invalid_request(opened: Opened) -> None:
    """A batch larger than --max-batch is one -32600 response and runs nothing."""
    daemon = await opened.daemon(1, max_batch=3)
    client = await opened.connect(daemon)
    write = {"jsonrpc": "2.0", "method": "gpu.set_power_limit", "id": 9}
    write["params"] = {"gpu_ids": [0], "power_limit_mw": 300_000}
    ok = {"jsonrpc": "2.0", "method": "time", "id": 1}
    await client.send([write, ok, ok, ok])
    reply = await client.read()
    assert isinstance(reply, dict)
    assert reply["id"] is None
    assert _code(reply) == -32600
    assert "at most 3" in reply["error"]["data"]
    assert daemon.sim.devices[0].power_limit_mw == DEFAULT_MW
    await client.send([ok, ok, ok])
    assert len(await client.read()) == 3


async def test_in_flight_cap_stops_reading(opened: Opened) -> None:
    """Beyond --max-in-flight the connection is not read; others are unaffected."""
    daemon = await opened.daemon(2, max_in_flight=2)
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    client = await opened.connect(daemon)
    other = await opened.connect(daemon)
    try:
        for i in range(3):
            await client.send(
                {"jsonrpc": "2.0", "method": "gpu.get_power", "id": i, "params": {"gpu_ids": [0]}}
            )
        await client.send({"jsonrpc": "2.0", "method": "time", "id": "t"})
        # The third request is not read while two are held, so "time" behind it waits too.
        with trio.move_on_after(0.5) as waited:
            await client.read(timeout=1.0)
        assert waited.cancelled_caught
        await other.result("time")
    finally:
        hold.set()
    ids = {(await client.read())["id"] for _ in range(4)}
    assert ids == {0, 1, 2, "t"}


async def test_unfinished_line_is_cut_off(opened: Opened) -> None:
    """A line not finished within --client-timeout gets a parse error and the hang-up."""
    daemon = await opened.daemon(1, client_timeout=0.3)
    client = await opened.connect(daemon)
    await client.send_raw(b'{"jsonrpc": "2.0", "meth')
    reply = await client.read(timeout=10)
    assert _code(reply) == -32700
    assert "not finished" in reply["error"]["data"]
    assert await client.read_line(timeout=10) == b""


async def test_trickling_client_is_cut_off(opened: Opened) -> None:
    """Sending a byte at a time never resets the line deadline."""
    daemon = await opened.daemon(1, client_timeout=0.5)
    client = await opened.connect(daemon)
    line = b'{"jsonrpc": "2.0", "method": "time", "id": 1}' * 10 + b"\n"

    async def trickle() -> None:
        for byte in line:
            try:
                await client.send_raw(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(0.05)

    async with trio.open_nursery() as inner:
        inner.start_soon(trickle)
        reply = await client.read(timeout=20)
        assert _code(reply) == -32700
        assert await client.read_line(timeout=10) == b""
        inner.cancel_scope.cancel()


async def test_steady_stream_split_mid_line_is_kept(opened: Opened) -> None:
    """Reads that always end mid-line do not add up to one line's deadline."""
    daemon = await opened.daemon(1, client_timeout=1.0)
    client = await opened.connect(daemon)
    stream = b"".join(b'{"jsonrpc": "2.0", "method": "time", "id": %d}\n' % i for i in range(80))
    step = 47  # not a line length: every chunk ends inside a line
    for start in range(0, len(stream), step):
        await client.send_raw(stream[start : start + step])
        await trio.sleep(0.05)  # 80 lines over about 4 s, four times the timeout
    ids = {(await client.read(timeout=10))["id"] for _ in range(80)}
    assert ids == set(range(80))


async def test_idle_connection_is_kept(opened: Opened) -> None:
    """A connection with no partial line is not closed for being quiet."""
    daemon = await opened.daemon(1, client_timeout=0.2)
    client = await opened.connect(daemon)
    await client.result("time")
    await trio.sleep(1.0)
    await client.result("time")


async def test_client_not_reading_replies_is_dropped(opened: Opened) -> None:
    """A client that sends but never reads is disconnected; others keep being served."""
    daemon = await opened.daemon(1, client_timeout=0.5)
    hog = await opened.connect(daemon)
    request = b'{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}\n' * 100

    async def flood() -> None:
        try:
            for _ in range(200):
                await hog.send_raw(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as inner:
        inner.start_soon(flood)
        await trio.sleep(2.0)  # replies pile up unread; the daemon gives up after 0.5 s
        other = await opened.connect(daemon)
        await other.result("time")
        # Whatever was sent before the hang-up is readable, then the end.
        replies = await _read_until_hang_up(hog)
        assert len(replies) < 200 * 100
        inner.cancel_scope.cancel()


async def test_connections_beyond_limit_are_refused(opened: Opened) -> None:
    """Beyond --max-connections a new connection is closed at once; old ones work."""
    daemon = await opened.daemon(1, max_connections=2)
    first, second = await opened.connect(daemon), await opened.connect(daemon)
    await first.result("time")
    await second.result("time")
    third = await opened.connect(daemon)
    await third.send({"jsonrpc": "2.0", "method": "time", "id": 1})
    assert await _read_until_hang_up(third) == []
    await first.result("time")
    await second.result("time")
    await second.aclose()
    await _eventually(lambda: len(daemon.running.server._connections) == 1)
    fourth = await opened.connect(daemon)
    await fourth.result("time")


# --- restoring settings -----------------------------------------------------------------


async def _change_everything(client: LineClient) -> None:
    await client.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    await client.result("gpu.set_persistence_mode", {"gpu_ids": [1], "enabled": True})
    clocks = {"min_clock_mhz": 900, "max_clock_mhz": 1200}
    await client.result("gpu.set_gpu_locked_clocks", {"gpu_ids": [2], **clocks})
    await client.result(
        "gpu.set_mem_locked_clocks", {"gpu_ids": [3], "min_clock_mhz": 2619, "max_clock_mhz": 2619}
    )


def _all_default(daemon: SimDaemon) -> bool:
    d = daemon.sim.devices
    return (
        d[0].power_limit_mw == DEFAULT_MW
        and d[1].persistence_mode == 0
        and d[2].gpu_locked_clocks is None
        and d[3].mem_locked_clocks is None
    )


async def test_restore_on_close(daemon: SimDaemon, opened: Opened) -> None:
    """Every setting a restore_on_close connection changed is put back when it closes."""
    client = await opened.connect(daemon)
    assert await client.result("session.set_restore_on_close", {"enabled": True}) == {
        "restore_on_close": True
    }
    assert (await client.result("session.whoami"))["restore_on_close"] is True
    await _change_everything(client)
    assert not _all_default(daemon)
    await client.aclose()
    await _eventually(lambda: _all_default(daemon))


async def test_restore_after_abrupt_close(daemon: SimDaemon, opened: Opened) -> None:
    """A connection that dies mid-request (a crashed client) is restored too."""
    client = await opened.connect(daemon)
    await client.result("session.set_restore_on_close", {"enabled": True})
    await client.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 250_000})
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "gpu.set_power_limit",
            "id": 5,
            "params": {"gpu_ids": [0], "power_limit_mw": 260_000},
        }
    )
    await trio.aclose_forcefully(client.stream)
    await _eventually(lambda: daemon.sim.devices[0].power_limit_mw == DEFAULT_MW)


async def test_no_restore_unless_enabled(daemon: SimDaemon, opened: Opened) -> None:
    """Without restore_on_close, a closed connection's settings stay."""
    client = await opened.connect(daemon)
    await client.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    await client.result("session.set_restore_on_close", {"enabled": True})
    await client.result("session.set_restore_on_close", {"enabled": False})
    await client.aclose()
    other = await opened.connect(daemon)
    await _eventually(lambda: len(daemon.running.server._connections) == 1)
    # A read queued after the close on the same lane sees the final state.
    limit = await other.result("gpu.get_power_limit", {"gpu_ids": [0]})
    assert limit == {"0": {"power_limit_mw": 300_000}}


async def test_later_writer_owns_the_setting(
    daemon: SimDaemon, opened: Opened, caplog: Any
) -> None:
    """A setting another connection changed later is not restored, and the skip is logged."""
    caplog.set_level(logging.INFO, logger="zeusd")
    first, second = await opened.connect(daemon), await opened.connect(daemon)
    await first.result("session.set_restore_on_close", {"enabled": True})
    await first.result("gpu.set_power_limit", {"gpu_ids": [0, 1], "power_limit_mw": 300_000})
    await second.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 400_000})
    await first.aclose()
    # GPU 1 is still first's: restored. GPU 0 was changed later by second: left alone.
    await _eventually(lambda: daemon.sim.devices[1].power_limit_mw == DEFAULT_MW)
    await _eventually(lambda: "not restored" in caplog.text)
    assert daemon.sim.devices[0].power_limit_mw == 400_000


async def test_restore_hands_back_to_previous_writer(daemon: SimDaemon, opened: Opened) -> None:
    """A's change, then B's on top: B's restore returns A's value, A's restore the original."""
    a, b = await opened.connect(daemon), await opened.connect(daemon)
    for c in (a, b):
        await c.result("session.set_restore_on_close", {"enabled": True})
    await a.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    await b.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 400_000})
    await b.aclose()
    await _eventually(lambda: daemon.sim.devices[0].power_limit_mw == 300_000)
    await a.aclose()
    await _eventually(lambda: daemon.sim.devices[0].power_limit_mw == DEFAULT_MW)


async def test_restore_on_exit(opened: Opened) -> None:
    """--restore-on-exit puts back everything changed through the daemon when it stops."""
    daemon = await opened.daemon(4, restore_on_exit=True)
    first, second = await opened.connect(daemon), await opened.connect(daemon)
    await _change_everything(first)
    await second.result("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 500_000})
    assert not _all_default(daemon)
    daemon.running.server.stop()
    with trio.fail_after(10):
        await daemon.running.server.wait_stopped()
    assert _all_default(daemon)


async def test_set_restore_on_close_checks_param(client: LineClient) -> None:
    """``enabled`` must be a boolean."""
    response = await client.call("session.set_restore_on_close", {"enabled": 1})
    assert _code(response) == -32602
    assert response["error"]["data"]["param"] == "enabled"


# --- audit ------------------------------------------------------------------------------


def _audits(caplog: Any) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "zeusd.audit"]


async def test_every_write_is_audited_once(
    daemon: SimDaemon, client: LineClient, caplog: Any
) -> None:
    """One audit record per write, with who, what, each GPU's outcome and the duration."""
    caplog.set_level(logging.INFO, logger="zeusd.audit")
    daemon.sim.devices[1].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    await client.call("gpu.set_power_limit", {"gpu_ids": [0, 1], "power_limit_mw": 300_000})
    await client.result("gpu.get_power_limit")
    await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 5})
    await client.send(
        [
            {
                "jsonrpc": "2.0",
                "method": "gpu.reset_power_limit",
                "id": 1,
                "params": {"gpu_ids": [0]},
            },
            {"jsonrpc": "2.0", "method": "gpu.reset_locked_clocks", "params": {"gpu_ids": [2]}},
        ]
    )
    await client.read()
    await _eventually(lambda: len(_audits(caplog)) >= 4)
    await client.result("time")
    records = _audits(caplog)
    assert [r["method"] for r in records[:2]] == ["gpu.set_power_limit"] * 2
    assert sorted(r["method"] for r in records[2:]) == [
        "gpu.reset_locked_clocks",
        "gpu.reset_power_limit",
    ]
    device_error, refused = records[0], records[1]
    assert device_error["uid"] == os.getuid()
    assert device_error["pid"] == os.getpid()
    assert device_error["status"] == "device error"
    assert device_error["gpus"]["0"] == "ok"
    assert device_error["gpus"]["1"]["nvml_error"] == "NVML_ERROR_NO_PERMISSION"
    assert device_error["params"] == {"gpu_ids": [0, 1], "power_limit_mw": 300_000}
    assert device_error["duration_ms"] >= 0
    assert refused["status"] == "refused"
    assert refused["code"] == -32602
    assert [(r["status"], r["gpus"]) for r in sorted(records[2:], key=lambda r: r["method"])] == [
        ("ok", {"2": "ok"}),
        ("ok", {"0": "ok"}),
    ]


async def test_audit_cuts_huge_params_short(
    daemon: SimDaemon, client: LineClient, caplog: Any
) -> None:
    """A write with enormous params cannot put them whole into the audit log."""
    caplog.set_level(logging.INFO, logger="zeusd.audit")
    huge = {"gpu_ids": [0], "power_limit_mw": 300_000, "junk": "x" * 100_000}
    assert _code(await client.call("gpu.set_power_limit", huge)) == -32602
    (record,) = _audits(caplog)
    assert record["params"]["length"] > 100_000
    assert len(record["params"]["truncated"]) == 1000
    assert len(caplog.text) < 10_000
