"""Restore-on-close undoes changes in stack order, whatever the order connections close in
(in-process daemon with a state dir; the records on disk follow every step)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd.sim import default_sim_gpus

DEFAULT_MW = 700_000
RECORD = "gpu0.power_limit.json"


@pytest.fixture
async def daemon(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[SimDaemon]:
    running = await start_sim_daemon(
        nursery, default_sim_gpus(2), sock_dir, state_dir=os.path.join(sock_dir, "state")
    )
    yield running
    running.running.server.stop(force=True)


def _state(daemon: SimDaemon) -> str:
    return os.path.join(os.path.dirname(daemon.path), "state")


def _record(daemon: SimDaemon, name: str = RECORD) -> dict[str, Any] | None:
    try:
        with open(os.path.join(_state(daemon), name), encoding="utf-8") as f:
            body: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    return body


async def _eventually(check: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


async def _restoring(daemon: SimDaemon, restore: bool = True) -> LineClient:
    client = await daemon.connect()
    await client.result("session.set_restore_on_close", {"enabled": restore})
    return client


async def _set(client: LineClient, mw: int, gpus: tuple[int, ...] = (0,)) -> None:
    params = {"gpu_ids": list(gpus), "power_limit_mw": mw}
    assert await client.result("gpu.set_power_limit", params) == {"applied": list(gpus)}


def _limit(daemon: SimDaemon, gpu: int = 0) -> int:
    return daemon.sim.devices[gpu].power_limit_mw


@pytest.mark.parametrize("first_to_close", ["A", "B"])
async def test_chain_ends_at_the_original_whatever_the_close_order(
    daemon: SimDaemon, first_to_close: str
) -> None:
    """A sets 300 W, B 400 W (both restore-on-close): after both close the GPU is at 700 W."""
    a, b = await _restoring(daemon), await _restoring(daemon)
    await _set(a, 300_000)
    await _set(b, 400_000)
    record = _record(daemon)
    assert record is not None
    assert (record["restore"], record["before"]) == (True, DEFAULT_MW)
    first, second = (a, b) if first_to_close == "A" else (b, a)
    await first.aclose()
    # A first: B's change is on top, so nothing moves yet. B first: back to A's 300 W.
    expected = 400_000 if first_to_close == "A" else 300_000
    await trio.sleep(0.2)
    await _eventually(lambda: _limit(daemon) == expected)
    await second.aclose()
    await _eventually(lambda: _limit(daemon) == DEFAULT_MW)
    await _eventually(lambda: _record(daemon) is None)


async def test_interleaved_writes_unwind_in_order(daemon: SimDaemon) -> None:
    """A 300, B 400, A 500: A closing goes back to B's 400; B closing then to 700."""
    a, b = await _restoring(daemon), await _restoring(daemon)
    await _set(a, 300_000)
    await _set(b, 400_000)
    await _set(a, 500_000)
    await a.aclose()
    await _eventually(lambda: _limit(daemon) == 400_000)
    await b.aclose()
    await _eventually(lambda: _limit(daemon) == DEFAULT_MW)


async def test_a_kept_change_ends_the_chain(daemon: SimDaemon, caplog: Any) -> None:
    """A (restore) 300, K (keep) 400, R (restore) 500: R closing gives K's 400; K's change
    stays when K closes, and A closing then changes nothing."""
    caplog.set_level(logging.INFO, logger="zeusd")
    a, k, r = await _restoring(daemon), await _restoring(daemon, False), await _restoring(daemon)
    await _set(a, 300_000)
    await _set(k, 400_000)
    await _set(r, 500_000)
    record = _record(daemon)
    assert record is not None
    assert (record["restore"], record["before"]) == (True, 400_000)
    await r.aclose()
    await _eventually(lambda: _limit(daemon) == 400_000)
    # The record is rewritten just after the restore's driver call: a crash between the two
    # restores 400 W again, which changes nothing.
    await _eventually(lambda: (_record(daemon) or {}).get("restore") is False)
    await k.aclose()
    await _eventually(lambda: "kept it" in caplog.text)
    await a.aclose()
    await _eventually(lambda: _record(daemon) is None)
    await trio.sleep(0.2)
    assert _limit(daemon) == 400_000


async def test_turning_restore_on_after_writing_is_recorded(daemon: SimDaemon) -> None:
    """Changes made before set_restore_on_close(true) are restored too, and the record says
    so by the time the reply arrives."""
    client = await daemon.connect()
    await _set(client, 300_000, (0, 1))
    for name in (RECORD, "gpu1.power_limit.json"):
        record = _record(daemon, name)
        assert record is not None
        assert record["restore"] is False
    await client.result("session.set_restore_on_close", {"enabled": True})
    for name in (RECORD, "gpu1.power_limit.json"):
        record = _record(daemon, name)
        assert record is not None
        assert (record["restore"], record["before"]) == (True, DEFAULT_MW)
    await client.aclose()
    await _eventually(lambda: _limit(daemon, 0) == _limit(daemon, 1) == DEFAULT_MW)
    await _eventually(lambda: os.listdir(_state(daemon)) == ["lock"])


async def test_a_failed_write_leaves_no_record(daemon: SimDaemon) -> None:
    """A write NVML refuses changes nothing, and leaves no restore record behind."""
    daemon.sim.devices[0].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    client = await _restoring(daemon)
    response = await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    assert response["error"]["code"] == -32001
    assert _record(daemon) is None
    await client.aclose()


async def test_clean_stop_leaves_no_records(daemon: SimDaemon) -> None:
    """Stopping cleanly restores restore-on-close changes and leaves no record at all."""
    keep, restore = await _restoring(daemon, False), await _restoring(daemon)
    await _set(keep, 250_000, (1,))
    await _set(restore, 300_000, (0,))
    assert sorted(os.listdir(_state(daemon))) == [
        "gpu0.power_limit.json",
        "gpu1.power_limit.json",
        "lock",
    ]
    daemon.running.server.stop()
    with trio.fail_after(10):
        await daemon.running.server.wait_stopped()
    await _eventually(lambda: sorted(os.listdir(_state(daemon))) == ["lock"])
    assert (_limit(daemon, 0), _limit(daemon, 1)) == (DEFAULT_MW, 250_000)
    for client in (keep, restore):
        await client.aclose()


async def test_a_write_whose_record_cannot_be_written_is_refused(
    daemon: SimDaemon, monkeypatch: Any
) -> None:
    """If the restore record cannot be made durable, the write is refused and changes nothing."""

    def full(record: Any) -> None:
        raise OSError(28, "No space left on device")

    store = daemon.running.context.ledger._store
    assert store is not None
    monkeypatch.setattr(store, "put", full)
    client = await _restoring(daemon)
    response = await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 300_000})
    assert response["error"]["code"] == -32001
    assert "restore record could not be written" in str(response["error"]["data"])
    assert _limit(daemon) == DEFAULT_MW
    await client.aclose()
