"""Per-GPU lanes: FIFO per GPU, isolation between GPUs, one worker per stuck GPU, batching."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio

from zeusd.gpu.lanes import GpuLanes, LaneClosedError


async def test_jobs_on_one_gpu_run_in_submission_order() -> None:
    """Jobs submitted to one lane run in the order submitted, whoever waits first."""
    lanes = GpuLanes(1, trio.CapacityLimiter(4))
    ran: list[int] = []
    jobs = [lanes.submit(0, lambda n=n: ran.append(n)) for n in range(200)]
    async with trio.open_nursery() as nursery:
        for job in reversed(jobs):  # waiters start in the opposite order
            nursery.start_soon(lanes.wait, 0, job)
    assert ran == list(range(200))


async def test_job_result_and_exception_are_captured() -> None:
    """A job's return value or exception comes back through its outcome."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    ok = lanes.submit(0, lambda: 42)

    def boom() -> None:
        raise RuntimeError("driver on fire")

    bad = lanes.submit(0, boom)
    assert (await lanes.wait(0, ok)).unwrap() == 42
    with pytest.raises(RuntimeError, match="on fire"):
        (await lanes.wait(0, bad)).unwrap()


async def test_backlog_shares_thread_hops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog of jobs runs in one thread hop, not one hop per job."""
    hops: list[int] = []
    real_run_sync = trio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        hops.append(1)
        return await real_run_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    ran: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        jobs = [lanes.submit(0, lambda n=n: ran.append(n)) for n in range(100)]
        async with trio.open_nursery() as waiters:
            for job in jobs:
                waiters.start_soon(lanes.wait, 0, job)
        lanes.close()
    assert ran == list(range(100))
    assert len(hops) == 1


async def test_first_result_is_not_held_back_by_its_batch() -> None:
    """The first job of a batch is answered while a later job of the batch still runs."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    release = threading.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        first = lanes.submit(0, lambda: "first")
        second = lanes.submit(0, release.wait)
        nursery.start_soon(lanes.wait, 0, second)
        with trio.fail_after(5):
            assert (await lanes.wait(0, first)).unwrap() == "first"
        assert second.result is None
        release.set()
        assert (await lanes.wait(0, second)).unwrap() is True
        lanes.close()


async def test_stuck_gpu_holds_one_worker_and_blocks_no_other() -> None:
    """While GPU 0's call hangs, GPU 1 keeps working and only one thread token is used."""
    limiter = trio.CapacityLimiter(2)
    lanes = GpuLanes(2, limiter)
    release = threading.Event()
    stuck = lanes.submit(0, release.wait)
    queued_behind = lanes.submit(0, lambda: "after")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lanes.wait, 0, stuck)
        await trio.sleep(0.05)
        for n in range(20):
            assert (await lanes.wait(1, lanes.submit(1, lambda n=n: n))).unwrap() == n
        assert limiter.borrowed_tokens == 1
        release.set()
    assert (await lanes.wait(0, queued_behind)).unwrap() == "after"


async def test_close_refuses_new_jobs_but_runs_queued_ones() -> None:
    """After close() submit fails, while jobs already queued still run."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    queued = lanes.submit(0, lambda: "queued")
    lanes.close()
    with pytest.raises(LaneClosedError):
        lanes.submit(0, lambda: None)
    assert (await lanes.wait(0, queued)).unwrap() == "queued"


async def test_forced_cancel_fails_the_batch_instead_of_hanging() -> None:
    """Cancelling the runner abandons the stuck call and fails its batch with LaneClosedError."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    release = threading.Event()
    stuck = lanes.submit(0, release.wait)
    with trio.move_on_after(0.1):
        await lanes.wait(0, stuck)
    assert stuck.result is not None
    with pytest.raises(LaneClosedError):
        stuck.result.unwrap()
    release.set()


async def test_busy_lane_takes_turns_with_a_waiting_one() -> None:
    """With one thread for two lanes, a long backlog on GPU 0 does not starve GPU 1."""
    lanes = GpuLanes(2, trio.CapacityLimiter(1))
    order: list[str] = []

    def slow(n: int) -> None:
        time.sleep(0.0005)
        order.append(f"gpu0-{n}")

    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        backlog = [lanes.submit(0, lambda n=n: slow(n)) for n in range(200)]
        async with trio.open_nursery() as waiters:
            for job in backlog:
                waiters.start_soon(lanes.wait, 0, job)
            await trio.sleep(0.01)  # GPU 0's worker is now busy with its backlog
            other = lanes.submit(1, lambda: order.append("gpu1"))
            await lanes.wait(1, other)
        lanes.close()
    assert order.index("gpu1") < 150
    assert [o for o in order if o != "gpu1"] == [f"gpu0-{n}" for n in range(200)]


async def test_detached_job_runs_with_nobody_waiting() -> None:
    """A job queued with submit_detached runs, and the lane moves on past it."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        lanes.submit_detached(0, lambda: ran.append("restore"))
        after = lanes.submit(0, lambda: ran.append("next"))
        with trio.fail_after(5):
            await lanes.wait(0, after)
        lanes.close()
    assert ran == ["restore", "next"]


async def test_detached_submit_needs_running_lanes() -> None:
    """Without run() nobody could ever drive a detached job, so it is refused."""
    with pytest.raises(LaneClosedError):
        GpuLanes(1, trio.CapacityLimiter(1)).submit_detached(0, lambda: None)
