"""Subscriptions, cpu-read and API groups through the in-process daemon."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import pytest
import trio
import trio.testing

from conftest import LineClient, SimDaemon, start_sim_daemon
from fake_rapl import REAL_RANGE_UJ, make_tree, package_energy, write_int
from zeusd.core.session import Session
from zeusd.rpc.dispatch import notification_line
from zeusd.server.connection import Connection
from zeusd.server.listeners import StartupError
from zeusd.sim import SimGpuSpec, default_sim_gpus
from zeusd.stream.outbox import PowerSample


async def notifications(client: LineClient, seconds: float) -> list[Any]:
    """Every line that arrives within *seconds*."""
    got: list[Any] = []
    with trio.move_on_after(seconds):
        while True:
            got.append(json.loads(await client.read_line(timeout=seconds + 1)))
    return got


async def answer(client: LineClient, method: str, params: Any) -> Any:
    """The response to one request, skipping the notifications that arrive before it."""
    await client.send({"jsonrpc": "2.0", "id": "answer", "method": method, "params": params})
    while True:
        line = json.loads(await client.read_line())
        if line.get("id") == "answer":
            return line


async def test_gpu_power_notifications(daemon: SimDaemon, client: LineClient) -> None:
    """subscribe answers an id, then gpu.power notifications carry each GPU's power."""
    sub = (await client.result("gpu.subscribe_power", {"gpu_ids": [0, 2], "interval_ms": 20}))[
        "subscription"
    ]
    got = await notifications(client, 0.5)
    assert len(got) >= 5
    for note in got:
        assert "id" not in note
        assert note["jsonrpc"] == "2.0"
        assert note["method"] == "gpu.power"
        assert note["params"]["subscription"] == sub
        assert set(note["params"]["power_mw"]) <= {"0", "2"}
        assert all(isinstance(v, int) and v > 0 for v in note["params"]["power_mw"].values())
    assert any(set(n["params"]["power_mw"]) == {"0", "2"} for n in got)


async def test_unsubscribe_stops_the_stream(daemon: SimDaemon, client: LineClient) -> None:
    """After the unsubscribe response, not one more notification of it arrives."""
    sub = (await client.result("gpu.subscribe_power", {"interval_ms": 10}))["subscription"]
    await notifications(client, 0.2)
    # Notifications sent before the response may still be in the pipe; none after it.
    assert (await answer(client, "unsubscribe", {"subscription": sub}))["result"] is True
    assert await notifications(client, 0.3) == []
    assert daemon.running.context.gpu_power is not None
    assert daemon.running.context.gpu_power.subscriber_count == 0


async def test_unknown_subscription_is_invalid_params(
    daemon: SimDaemon, client: LineClient
) -> None:
    """An id that is not this connection's (another's, or made up) is -32602."""
    other = await daemon.connect()
    theirs = (await other.result("gpu.subscribe_power", {"interval_ms": 1000}))["subscription"]
    for bad in [theirs, "nope"]:
        error = (await client.call("unsubscribe", {"subscription": bad}))["error"]
        assert error["code"] == -32602
        assert error["data"]["param"] == "subscription"
    error = (await client.call("unsubscribe", {"subscription": 5}))["error"]
    assert error["code"] == -32602
    # Unsubscribing twice: the second time it is unknown.
    assert (await answer(other, "unsubscribe", {"subscription": theirs}))["result"] is True
    error = (await answer(other, "unsubscribe", {"subscription": theirs}))["error"]
    assert error["code"] == -32602
    await other.aclose()


@pytest.mark.parametrize(
    ("params", "param", "reason"),
    [
        ({"interval_ms": 9}, "interval_ms", "[10, 3600000]"),
        ({"interval_ms": 3_600_001}, "interval_ms", "[10, 3600000]"),
        ({"interval_ms": 50.0}, "interval_ms", "integer"),
        ({"interval_ms": True}, "interval_ms", "integer"),
        ({"interval_ms": None}, "interval_ms", "integer"),
        ({"gpu_ids": [9]}, "gpu_ids", "unknown GPU 9"),
        ({"gpu_ids": []}, "gpu_ids", "empty"),
        ({"period": 5}, "period", "unknown param"),
    ],
)
async def test_bad_subscribe_params(
    daemon: SimDaemon, client: LineClient, params: Any, param: str, reason: str
) -> None:
    """Bad ids or intervals are -32602 and start nothing."""
    error = (await client.call("gpu.subscribe_power", params))["error"]
    assert error["code"] == -32602
    assert error["data"]["param"] == param
    assert reason in error["data"]["reason"]
    assert daemon.running.context.gpu_power is not None
    assert daemon.running.context.gpu_power.subscriber_count == 0


async def test_closing_the_connection_ends_its_subscriptions(daemon: SimDaemon) -> None:
    """A client that hangs up leaves no subscription behind."""
    hub = daemon.running.context.gpu_power
    assert hub is not None
    client = await daemon.connect()
    for interval in (10, 30):
        await client.result("gpu.subscribe_power", {"interval_ms": interval})
    assert hub.subscriber_count == 2
    await client.aclose()
    with trio.fail_after(5):
        while hub.subscriber_count:
            await trio.sleep(0.01)


async def test_response_precedes_notifications_in_a_batch(sock_dir: str) -> None:
    """A subscribe inside a batch waiting on a slow GPU: the batch reply still comes first."""
    specs = [SimGpuSpec(), SimGpuSpec(latency_ms=300)]
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(nursery, specs, sock_dir)
        client = await daemon.connect()
        await client.send(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "gpu.get_power", "params": {"gpu_ids": [1]}},
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "gpu.subscribe_power",
                    "params": {"gpu_ids": [0], "interval_ms": 10},
                },
            ]
        )
        first = await client.read()
        assert isinstance(first, list)
        sub = first[1]["result"]["subscription"]
        later = await notifications(client, 0.2)
        assert later
        assert all(n["params"]["subscription"] == sub for n in later)
        await client.aclose()
        daemon.running.server.stop(force=True)


async def test_subscribe_as_notification_still_streams(
    daemon: SimDaemon, client: LineClient
) -> None:
    """A subscribe sent without id gets no response, but its stream starts."""
    await client.send(
        {"jsonrpc": "2.0", "method": "gpu.subscribe_power", "params": {"interval_ms": 10}}
    )
    got = await notifications(client, 0.3)
    assert got
    assert all(n["method"] == "gpu.power" for n in got)


async def test_failing_gpu_is_left_out_and_logged_once(
    daemon: SimDaemon, client: LineClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU whose power read fails is missing from notifications; one warning per run."""
    daemon.sim.devices[1].faults = {"get_power": "NVML_ERROR_GPU_IS_LOST"}
    with caplog.at_level(logging.WARNING, logger="zeusd.stream.hub"):
        await client.result("gpu.subscribe_power", {"gpu_ids": [0, 1], "interval_ms": 10})
        got = await notifications(client, 0.4)
    assert len(got) >= 5
    assert all(set(n["params"]["power_mw"]) == {"0"} for n in got)
    warnings = [r.getMessage() for r in caplog.records if r.name == "zeusd.stream.hub"]
    assert len(warnings) == 1
    assert "GPU 1" in warnings[0]


async def test_a_stalled_reader_neither_grows_nor_slows_others(daemon: SimDaemon) -> None:
    """A client that stops reading holds one line per subscription; others stream on."""
    stalled = await daemon.connect()
    stalled.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(20):
        await answer(stalled, "gpu.subscribe_power", {"interval_ms": 10})
    await trio.sleep(1.0)  # its socket buffers fill; the daemon's writes to it block
    reader = await daemon.connect()
    await reader.result("gpu.subscribe_power", {"gpu_ids": [0], "interval_ms": 10})
    got = await notifications(reader, 0.5)
    assert len(got) >= 15  # ~50 expected; wide margin for a loaded machine
    pending = [len(c._ready) + len(c._held) for c in daemon.running.server._connections]
    assert max(pending) <= 20  # one per subscription at most
    assert max(pending) >= 1  # the stalled one really is backed up
    await reader.aclose()
    await stalled.aclose()


def _sample(n: int) -> PowerSample:
    return PowerSample("gpu", "a", n, {"0": n})


async def test_slow_reader_keeps_only_the_newest_line() -> None:
    """While a client does not read, each subscription holds one unsent line, the newest."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    session = Session(transport="uds")
    connection = Connection(ours, None, 1024, session)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection._write_notifications)
        session.outbox.register("a")
        connection._release(["a"])
        for n in range(1000):
            session.outbox.put("a", _sample(n))
            await trio.sleep(0)
        assert len(connection._ready) <= 1
        received = b""
        while not received.endswith(notification_line(_sample(999))):
            received += await theirs.receive_some(100)
        # The writer blocked on the first line; everything between was replaced.
        assert received.count(b"\n") <= 3
        nursery.cancel_scope.cancel()


async def test_lines_wait_for_their_subscribe_reply_and_end_at_drop() -> None:
    """A held subscription writes nothing until released, and a drop discards its line."""
    ours, theirs = trio.testing.memory_stream_pair()
    session = Session(transport="uds")
    connection = Connection(ours, None, 1024, session)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection._write_notifications)
        session.outbox.register("a")
        session.outbox.put("a", _sample(1))
        await trio.sleep(0.05)
        with trio.move_on_after(0.05):
            assert await theirs.receive_some() == b""  # pragma: no cover - must time out
        connection._release(["a"])
        assert await theirs.receive_some() == notification_line(_sample(1))
        session.outbox.put("a", _sample(2))
        session.outbox.drop("a")
        session.outbox.put("a", _sample(3))
        with trio.move_on_after(0.05) as scope:
            await theirs.receive_some()
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()


# --- cpu-read --------------------------------------------------------------------------


@pytest.fixture
def rapl_root(sock_dir: str) -> str:
    return make_tree(os.path.join(sock_dir, "powercap"), [True, False])


async def test_discover_lists_cpus_and_groups(
    nursery: trio.Nursery, sock_dir: str, rapl_root: str
) -> None:
    """With a RAPL tree, cpu-read is on by default and discover lists the CPUs."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, rapl_root=rapl_root)
    client = await daemon.connect()
    result = await client.result("discover")
    assert result["enabled_api_groups"] == ["gpu-control", "gpu-read", "cpu-read"]
    assert result["cpus"] == [{"id": 0, "dram_available": True}, {"id": 1, "dram_available": False}]
    await client.aclose()
    daemon.running.server.stop(force=True)


async def test_cpu_energy_power_and_stream(
    nursery: trio.Nursery, sock_dir: str, rapl_root: str
) -> None:
    """cpu.get_cumulative_energy wraps correctly; get_power and cpu.power have the shape."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, rapl_root=rapl_root)
    client = await daemon.connect()
    first = await client.result("cpu.get_cumulative_energy", {"cpu_ids": [1]})
    assert first == {"1": {"cpu_energy_uj": 1_000_000, "dram_energy_uj": None}}
    write_int(package_energy(rapl_root, 1), REAL_RANGE_UJ - 10)
    await client.result("cpu.get_cumulative_energy", {"cpu_ids": [1]})
    write_int(package_energy(rapl_root, 1), 90)  # wrapped: 100 uJ after the last reading
    got = await client.result("cpu.get_cumulative_energy", {"cpu_ids": [1], "dram": False})
    assert got == {"1": {"cpu_energy_uj": REAL_RANGE_UJ + 90, "dram_energy_uj": None}}
    power = await client.result("cpu.get_power")
    assert set(power["power_mw"]) == {"0", "1"}
    assert power["power_mw"]["1"]["dram_mw"] is None
    assert isinstance(power["power_mw"]["0"]["dram_mw"], int)
    sub = (await client.result("cpu.subscribe_power", {"interval_ms": 20}))["subscription"]
    got_notes = await notifications(client, 0.3)
    assert got_notes
    assert all(n["method"] == "cpu.power" and n["params"]["subscription"] == sub for n in got_notes)
    assert got_notes[-1]["params"]["power_mw"]["0"] == {"cpu_mw": 0, "dram_mw": 0}
    await client.aclose()
    daemon.running.server.stop(force=True)


async def test_rapl_failure_is_a_device_error(
    nursery: trio.Nursery, sock_dir: str, rapl_root: str
) -> None:
    """A counter that became unreadable is -32001 with RAPL_READ_FAILED for that CPU."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, rapl_root=rapl_root)
    client = await daemon.connect()
    os.remove(package_energy(rapl_root, 0))
    for method in ("cpu.get_cumulative_energy", "cpu.get_power"):
        error = (await client.call(method))["error"]
        assert error["code"] == -32001
        assert error["data"]["succeeded"] == [1]
        assert error["data"]["errors"]["0"]["nvml_error"] == "RAPL_READ_FAILED"
    error = (await client.call("cpu.get_cumulative_energy", {"cpu": None}))["error"]
    assert error["code"] == -32602
    await client.aclose()
    daemon.running.server.stop(force=True)


async def test_disabled_groups_answer_group_disabled(
    nursery: trio.Nursery, sock_dir: str, rapl_root: str
) -> None:
    """--enable gpu-read: writes and cpu-read methods are -32004; unsubscribe still works."""
    daemon = await start_sim_daemon(
        nursery, default_sim_gpus(1), sock_dir, rapl_root=rapl_root, enable=("gpu-read",)
    )
    client = await daemon.connect()
    for method, params in [
        ("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000}),
        ("cpu.get_power", {}),
        ("cpu.subscribe_power", {}),
    ]:
        error = (await client.call(method, params))["error"]
        assert error["code"] == -32004
    assert (await client.result("discover"))["enabled_api_groups"] == ["gpu-read"]
    error = (await client.call("unsubscribe", {"subscription": "x"}))["error"]
    assert error["code"] == -32602
    await client.aclose()
    daemon.running.server.stop(force=True)


async def test_explicit_cpu_read_without_rapl_is_a_startup_error(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    """Asking for cpu-read where there is no RAPL tree fails start-up, naming the path."""
    with pytest.raises(StartupError, match=r"cpu-read: no RAPL powercap tree at .*no-powercap"):
        await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, enable=("cpu-read",))


async def test_subscriptions_per_connection_are_capped(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    """Past --max-subscriptions-per-connection a subscribe is -32602 naming the limit."""
    daemon = await start_sim_daemon(
        nursery, default_sim_gpus(1), sock_dir, max_subscriptions_per_connection=3
    )
    client, other = await daemon.connect(), await daemon.connect()
    params = {"interval_ms": 1000}
    subs = [(await answer(client, "gpu.subscribe_power", params))["result"] for _ in range(3)]
    refused = await answer(client, "gpu.subscribe_power", params)
    assert refused["error"]["code"] == -32602
    assert refused["error"]["data"]["param"] == "gpu_ids"
    assert "--max-subscriptions-per-connection 3" in refused["error"]["data"]["reason"]
    # The cap is per connection: another one may still subscribe.
    assert "result" in await answer(other, "gpu.subscribe_power", params)
    unsubscribed = await answer(client, "unsubscribe", subs[0])
    assert unsubscribed["result"] is True
    assert "result" in await answer(client, "gpu.subscribe_power", params)
    await client.aclose()
    await other.aclose()
    daemon.running.server.stop(force=True)


async def test_subscriptions_in_total_are_capped(
    nursery: trio.Nursery, sock_dir: str, rapl_root: str
) -> None:
    """Past --max-subscriptions (GPU and CPU together) a subscribe is -32602 naming it;
    a closed connection gives its subscriptions back."""
    daemon = await start_sim_daemon(
        nursery, default_sim_gpus(1), sock_dir, rapl_root=rapl_root, max_subscriptions=2
    )
    first, second = await daemon.connect(), await daemon.connect()
    assert "result" in await answer(first, "gpu.subscribe_power", {"interval_ms": 1000})
    assert "result" in await answer(second, "cpu.subscribe_power", {"interval_ms": 1000})
    refused = await answer(second, "gpu.subscribe_power", {"interval_ms": 1000})
    assert refused["error"]["code"] == -32602
    assert "--max-subscriptions 2" in refused["error"]["data"]["reason"]
    await first.aclose()
    hub = daemon.running.context.gpu_power
    assert hub is not None
    with trio.fail_after(5):
        while hub.subscriber_count:
            await trio.sleep(0.01)
    assert "result" in await answer(second, "gpu.subscribe_power", {"interval_ms": 1000})
    await second.aclose()
    daemon.running.server.stop(force=True)
