"""Per-GPU lanes: FIFO per GPU, isolation between GPUs, one worker per stuck GPU."""

from __future__ import annotations

import threading

import pytest
import trio

from zeusd.gpu.lanes import GpuLanes, LaneClosedError


async def test_jobs_on_one_gpu_run_in_submission_order(nursery: trio.Nursery) -> None:
    """Jobs submitted to one lane run one after another in the order submitted."""
    lanes = GpuLanes(1, trio.CapacityLimiter(4))
    await nursery.start(lanes.run)
    ran: list[int] = []
    jobs = [lanes.submit(0, lambda n=n: ran.append(n)) for n in range(100)]
    for job in jobs:
        (await job.wait()).unwrap()
    assert ran == list(range(100))


async def test_job_result_and_exception_are_captured(nursery: trio.Nursery) -> None:
    """A job's return value or exception comes back through its outcome."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    await nursery.start(lanes.run)
    ok = lanes.submit(0, lambda: 42)

    def boom() -> None:
        raise RuntimeError("driver on fire")

    bad = lanes.submit(0, boom)
    assert (await ok.wait()).unwrap() == 42
    with pytest.raises(RuntimeError, match="on fire"):
        (await bad.wait()).unwrap()


async def test_stuck_gpu_holds_one_worker_and_blocks_no_other(nursery: trio.Nursery) -> None:
    """While GPU 0's call hangs, GPU 1 keeps working and only one thread token is used."""
    limiter = trio.CapacityLimiter(2)
    lanes = GpuLanes(2, limiter)
    await nursery.start(lanes.run)
    release = threading.Event()
    stuck = lanes.submit(0, release.wait)
    queued_behind = lanes.submit(0, lambda: "after")
    for n in range(20):
        assert (await lanes.submit(1, lambda n=n: n).wait()).unwrap() == n
    assert limiter.borrowed_tokens == 1
    release.set()
    assert (await stuck.wait()).unwrap() is True
    assert (await queued_behind.wait()).unwrap() == "after"


async def test_close_runs_queued_jobs_then_refuses_new_ones() -> None:
    """After close() the queue still drains and the lanes task ends; submit then fails."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    release = threading.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        first = lanes.submit(0, release.wait)
        second = lanes.submit(0, lambda: "queued")
        lanes.close()
        with pytest.raises(LaneClosedError):
            lanes.submit(0, lambda: None)
        release.set()
    assert (await first.wait()).unwrap() is True
    assert (await second.wait()).unwrap() == "queued"
