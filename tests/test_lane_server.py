"""Lanes behind the in-process server: batches, hung GPUs, shared reads, queue limits, stop."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd.sim import default_sim_gpus


def _req(method: str, id: Any, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": id}


def _line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[SimDaemon], Awaitable[LineClient]]]:
    """Open client connections that are closed after the test."""
    opened: list[LineClient] = []

    async def open_one(daemon: SimDaemon) -> LineClient:
        opened.append(await daemon.connect())
        return opened[-1]

    yield open_one
    for client in opened:
        await client.aclose()


async def test_batch_waiting_on_a_held_gpu_stalls_no_other_client(
    daemon: SimDaemon, connect: Any
) -> None:
    """The issue's batch case: [GPU 0, GPU 1] with GPU 0 held; another client's GPU 1 read."""
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    batcher, other = await connect(daemon), await connect(daemon)
    try:
        batch = [_req("gpu.get_power_limit", n, gpu_ids=[n]) for n in (0, 1)]
        await batcher.send_raw(_line(batch))
        await trio.sleep(0.05)
        reply = await other.call("gpu.get_power_limit", {"gpu_ids": [1]})
        assert reply["result"] == {"1": {"power_limit_mw": 700_000}}
    finally:
        hold.set()
    assert sorted(r["id"] for r in await batcher.read()) == [0, 1]


async def test_hung_gpu_with_work_from_many_connections_holds_up_no_other(
    daemon: SimDaemon,
    connect: Any,
) -> None:
    """20 connections queue work on a held GPU 0; GPU 1 answers every call meanwhile."""
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    queued = [await connect(daemon) for _ in range(20)]
    try:
        for n, conn in enumerate(queued):
            method = "gpu.get_power_limit" if n % 2 else "gpu.get_power"
            await conn.send(_req(method, n, gpu_ids=[0]))
        probe = await connect(daemon)
        for _ in range(50):
            assert "1" in await probe.result("gpu.get_power_limit", {"gpu_ids": [1]})
    finally:
        hold.set()
    for n, conn in enumerate(queued):
        assert (await conn.read())["id"] == n


async def test_cancelled_hub_wait_leaves_the_lane_running(daemon: SimDaemon, connect: Any) -> None:
    """A subscription's read outlasting its wait (cancelled) does not strand GPU 0's lane."""
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    client = await connect(daemon)
    await client.result("gpu.subscribe_power", {"gpu_ids": [0], "interval_ms": 10})
    await trio.sleep(0.1)  # the hub stopped waiting for its held read several times
    await client.send(_req("gpu.get_power_limit", "after", gpu_ids=[0]))
    hold.set()
    while (reply := await client.read()).get("id") != "after":
        assert reply.get("method") == "gpu.power"
    assert reply["result"] == {"0": {"power_limit_mw": 700_000}}


async def test_flood_of_reads_shares_driver_calls(
    daemon: SimDaemon, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads queued behind a held call run as one driver call; a write between splits them."""
    calls: list[int] = []
    real = daemon.sim.nvmlDeviceGetPowerManagementLimit

    def counted(handle: Any) -> Any:
        calls.append(1)
        return real(handle)

    monkeypatch.setattr(daemon.sim, "nvmlDeviceGetPowerManagementLimit", counted)
    hold = threading.Event()
    device = daemon.sim.devices[0]
    device.hold = hold
    client = await connect(daemon)
    await client.send(_req("gpu.get_power", "held", gpu_ids=[0]))
    await trio.sleep(0.05)
    reads = [_req("gpu.get_power_limit", n, gpu_ids=[0]) for n in range(200)]
    write = _req("gpu.set_power_limit", "w", gpu_ids=[0], power_limit_mw=300_000)
    after = [_req("gpu.get_power_limit", 1000 + n, gpu_ids=[0]) for n in range(200)]
    await client.send_raw(_line(reads) + _line(write) + _line(after))
    await trio.sleep(0.05)
    hold.set()
    replies: dict[Any, Any] = {}
    while len(replies) < 4:
        reply = await client.read()
        replies[reply[0]["id"] if isinstance(reply, list) else reply["id"]] = reply
    assert {m["result"]["0"]["power_limit_mw"] for m in replies[0]} == {700_000}
    assert replies["w"]["result"] == {"applied": [0]}
    assert {m["result"]["0"]["power_limit_mw"] for m in replies[1000]} == {300_000}
    # One call per run of reads, plus the write's own look at the value before.
    assert len(calls) == 3


async def test_per_connection_queue_limit_is_a_clear_error(
    sock_dir: str, nursery: Any, connect: Any
) -> None:
    """Beyond --max-queued-per-client on one GPU a request is -32602 naming the limit."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(2), sock_dir, max_queued_per_client=3)
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    client, other = await connect(daemon), await connect(daemon)
    try:
        for n in range(3):
            await client.send(_req("gpu.get_power", n, gpu_ids=[0]))
        refused = await client.call("gpu.get_power", {"gpu_ids": [0]})
        assert refused["error"]["code"] == -32602
        assert refused["error"]["data"]["param"] == "gpu_ids"
        assert "--max-queued-per-client 3" in refused["error"]["data"]["reason"]
        assert "1" in (await client.result("gpu.get_power", {"gpu_ids": [1]}))["power_mw"]
        await other.send(_req("gpu.get_power", "other", gpu_ids=[0]))  # its own allowance
    finally:
        hold.set()
    assert {(await client.read())["id"] for _ in range(3)} == {0, 1, 2}
    assert (await other.read())["id"] == "other"
    daemon.running.server.stop(force=True)
