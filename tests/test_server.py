"""The in-process server on a temp Unix socket: concurrency, ordering, framing, shutdown."""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Any

import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd.rpc.dispatch import Dispatcher
from zeusd.sim import default_sim_gpus


def _req(method: str, id: Any = None, **params: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


def _line(*messages: Any) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


async def test_pipelined_requests_are_all_answered(client: LineClient) -> None:
    """Many requests sent without waiting each get exactly one response with their id."""
    await client.send_raw(
        b"".join(_line(_req("gpu.get_power_limit", i, gpu_ids=[i % 4])) for i in range(50))
    )
    responses = [await client.read() for _ in range(50)]
    assert sorted(r["id"] for r in responses) == list(range(50))
    assert all(r["result"][str(r["id"] % 4)]["power_limit_mw"] == 700_000 for r in responses)


async def test_held_gpu_does_not_delay_other_gpu_on_same_connection(
    daemon: SimDaemon, client: LineClient
) -> None:
    """A request stuck on GPU 0 does not hold up a later request for GPU 1 or discover."""
    hold = threading.Event()
    daemon.sim.devices[0].hold = hold
    try:
        await client.send_raw(
            _line(
                _req("gpu.get_power", 1, gpu_ids=[0]),
                _req("gpu.get_power", 2, gpu_ids=[1]),
                _req("discover", 3),
            )
        )
        first, second = await client.read(), await client.read()
        assert {first["id"], second["id"]} == {2, 3}
    finally:
        hold.set()
    assert (await client.read())["id"] == 1


async def test_write_fans_out_to_gpus_concurrently(daemon: SimDaemon, client: LineClient) -> None:
    """All four GPUs of one write are worked on at once (a barrier only opens for all four)."""
    barrier = threading.Barrier(4, timeout=5)
    for device in daemon.sim.devices:
        device.hold = barrier  # type: ignore[assignment]  # anything with wait() will do
    response = await client.call(
        "gpu.set_power_limit", {"gpu_ids": [0, 1, 2, 3], "power_limit_mw": 400_000}
    )
    for device in daemon.sim.devices:
        device.hold = None
    assert response["result"] == {"applied": [0, 1, 2, 3]}
    assert [d.power_limit_mw for d in daemon.sim.devices] == [400_000] * 4


async def test_notification_then_read_observes_the_write(client: LineClient) -> None:
    """A write sent as a notification is applied before a later read of the same GPU."""
    await client.send_raw(
        _line(
            _req("gpu.set_power_limit", gpu_ids=[2], power_limit_mw=321_000),
            _req("gpu.get_power_limit", 7, gpu_ids=[2]),
        )
    )
    response = await client.read()
    assert response == {"jsonrpc": "2.0", "result": {"2": {"power_limit_mw": 321_000}}, "id": 7}


async def test_batch_mixed_with_notifications(daemon: SimDaemon, client: LineClient) -> None:
    """A batch answers one array holding only its requests' responses, in member order."""
    await client.send(
        [
            _req("gpu.set_persistence_mode", gpu_ids=[0, 1], enabled=True),
            _req("gpu.get_persistence_mode", "a", gpu_ids=[1]),
            _req("time"),
            _req("no.such.method"),
            _req("gpu.get_power_limit", "b", gpu_ids=[3]),
        ]
    )
    reply = await client.read()
    assert [r["id"] for r in reply] == ["a", "b"]
    assert reply[0]["result"] == {"1": {"enabled": True}}
    assert daemon.sim.devices[0].persistence_mode == 1


async def test_batch_of_notifications_gets_no_reply(daemon: SimDaemon, client: LineClient) -> None:
    """Nothing at all is written for a batch of notifications; the work still happens."""
    await client.send(
        [
            _req("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=250_000),
            _req("time"),
        ]
    )
    await client.send(_req("gpu.get_power_limit", 99, gpu_ids=[1]))
    response = await client.read()
    assert response["id"] == 99
    assert response["result"]["1"]["power_limit_mw"] == 250_000


async def test_failed_notification_is_logged_not_answered(client: LineClient, caplog: Any) -> None:
    """A notification with bad params gets no response; the failure is in the log."""
    await client.send(_req("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=5))
    assert (await client.call("time"))["result"]["timestamp_ms"] > 0
    assert any("gpu.set_power_limit failed" in r.getMessage() for r in caplog.records)


async def test_per_gpu_order_follows_read_order_across_connections(
    daemon: SimDaemon, monkeypatch: Any
) -> None:
    """Writes from 16 racing connections reach each GPU in exactly the order they were read."""
    read_order: list[int] = []
    original = Dispatcher.steps  # what a connection hands each line to

    def recording(self: Dispatcher, line: bytes, session: Any) -> Any:
        # Recorded when the line is handled (its first step), not when it is handed over:
        # a connection may wait for its user's turn in between.
        message = json.loads(line)
        if message.get("method") == "gpu.set_power_limit":
            read_order.append(message["params"]["power_limit_mw"])
        return (yield from original(self, line, session))

    monkeypatch.setattr(Dispatcher, "steps", recording)
    applied: list[int] = []
    device = daemon.sim.devices[0]
    device.latency_s = 0.001  # let a queue build up on the lane
    real_set = daemon.sim.nvmlDeviceSetPowerManagementLimit

    def spy(handle: Any, limit: int) -> None:
        real_set(handle, limit)
        applied.append(limit)

    monkeypatch.setattr(daemon.sim, "nvmlDeviceSetPowerManagementLimit", spy)

    async def writer(conn: int) -> None:
        client = await daemon.connect()
        rng = random.Random(conn)
        for n in range(12):
            value = 200_000 + conn * 1000 + n
            await client.send(_req("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=value))
            if rng.random() < 0.3:
                await trio.sleep(0)
        await client.send(_req("time", "done"))
        assert (await client.read())["id"] == "done"
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for conn in range(16):
            nursery.start_soon(writer, conn)
    final = await daemon.connect()
    result = await final.result("gpu.get_power_limit", {"gpu_ids": [0]})
    await final.aclose()
    assert len(read_order) == 16 * 12
    assert applied == read_order
    assert result["0"]["power_limit_mw"] == read_order[-1]


async def test_line_too_long_gets_parse_error_then_close(sock_dir: str) -> None:
    """Past --max-line-bytes the daemon answers -32700 with id null at once and hangs up."""
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, max_line_bytes=64)
        client = await daemon.connect()
        await client.send_raw(b'{"jsonrpc":"2.0","method":"time","id":1}\n' + b" " * 100)
        assert (await client.read())["id"] == 1
        error = await client.read()
        assert error["error"]["code"] == -32700
        assert error["id"] is None
        assert await client.read_line() == b""
        other = await daemon.connect()
        assert (await other.result("time"))["timestamp_ms"] > 0
        await other.aclose()
        await client.aclose()
        daemon.running.server.stop(force=True)


async def test_last_line_without_newline_is_answered_at_eof(client: LineClient) -> None:
    """A final request without \\n, followed by half-close, is still processed."""
    await client.send_raw(b'{"jsonrpc":"2.0","method":"time","id":"last"}')
    await client.stream.send_eof()
    assert (await client.read())["id"] == "last"
    assert await client.read_line() == b""


async def test_write_from_vanished_client_is_still_applied(daemon: SimDaemon) -> None:
    """A client that sends a write and disconnects at once loses nothing."""
    hold = threading.Event()
    daemon.sim.devices[3].hold = hold
    client = await daemon.connect()
    await client.send(_req("gpu.set_power_limit", 1, gpu_ids=[3], power_limit_mw=333_000))
    await trio.sleep(0.05)
    await client.aclose()
    hold.set()
    daemon.sim.devices[3].hold = None
    other = await daemon.connect()
    result = await other.result("gpu.get_power_limit", {"gpu_ids": [3]})
    await other.aclose()
    assert result["3"]["power_limit_mw"] == 333_000


async def test_broken_client_does_not_affect_others(daemon: SimDaemon) -> None:
    """Garbage, resets and half-written lines on one connection leave another untouched."""
    good = await daemon.connect()
    for junk in (b"\xff\xfe\x00garbage\n", b'{"jsonrpc":"2.0","meth', b"[" * 100_000 + b"\n"):
        bad = await daemon.connect()
        await bad.send_raw(junk)
        await bad.aclose()
    assert (await good.result("gpu.get_power_limit", {"gpu_ids": [0]}))["0"]
    await good.aclose()


async def test_stop_finishes_in_flight_then_removes_socket(sock_dir: str) -> None:
    """On stop the daemon stops accepting, answers what is in flight, and removes its socket."""
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(nursery, default_sim_gpus(2), sock_dir)
        daemon.sim.devices[1].latency_s = 0.3
        client = await daemon.connect()
        await client.send(_req("gpu.set_power_limit", 5, gpu_ids=[1], power_limit_mw=444_000))
        await trio.sleep(0.05)
        daemon.running.server.stop()
        assert (await client.read())["result"] == {"applied": [1]}
        assert await client.read_line() == b""
        await client.aclose()
        await daemon.running.server.wait_stopped()
    assert not os.path.exists(daemon.path)
    assert daemon.sim.devices[1].power_limit_mw == 444_000


async def test_notification_failure_is_logged_after_client_left(
    daemon: SimDaemon, caplog: Any
) -> None:
    """A failing notification from a client that already hung up still runs and is logged."""
    device = daemon.sim.devices[2]
    device.faults["set_persistence_mode"] = "NVML_ERROR_NO_PERMISSION"
    hold = threading.Event()
    device.hold = hold
    client = await daemon.connect()
    await client.send(_req("gpu.set_persistence_mode", gpu_ids=[2], enabled=True))
    await trio.sleep(0.05)
    await client.aclose()
    hold.set()
    with trio.fail_after(5):
        while not any("NVML_ERROR_NO_PERMISSION" in r.getMessage() for r in caplog.records):
            await trio.sleep(0.01)
    assert device.persistence_mode == 0
