"""Per-GPU lanes: FIFO per GPU, work that runs without waiters, isolation, sharing, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError, LaneFullError


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., GpuLanes]]:
    """Make lanes that run for the test's duration."""
    async with trio.open_nursery() as nursery:
        made: list[GpuLanes] = []

        def make(gpus: int = 1, threads: int = 1, **kwargs: Any) -> GpuLanes:
            lanes = GpuLanes(gpus, trio.CapacityLimiter(threads), **kwargs)
            made.append(lanes)
            return lanes

        async def start(lanes: GpuLanes) -> None:
            await nursery.start(lanes.run)

        make.start = start  # type: ignore[attr-defined]
        yield make
        for lanes in made:
            lanes.close()


async def _started(running: Callable[..., GpuLanes], *args: Any, **kwargs: Any) -> GpuLanes:
    lanes = running(*args, **kwargs)
    await running.start(lanes)  # type: ignore[attr-defined]
    return lanes


def _one(lanes: GpuLanes, gpu: int, fn: Callable[[], Any], **kwargs: Any) -> Job:
    return lanes.submit([(gpu, fn)], **kwargs)[0]


async def test_jobs_on_one_gpu_run_in_submission_order(running: Any) -> None:
    """Jobs submitted to one lane run in the order submitted, whoever waits first."""
    lanes = await _started(running, threads=4)
    ran: list[int] = []
    jobs = [_one(lanes, 0, lambda n=n: ran.append(n)) for n in range(200)]
    for job in reversed(jobs):
        await job.wait()
    assert ran == list(range(200))


async def test_job_result_and_exception_are_captured(running: Any) -> None:
    """A job's return value or exception comes back through its outcome."""
    lanes = await _started(running)

    def boom() -> None:
        raise RuntimeError("driver on fire")

    ok, bad = lanes.submit([(0, lambda: 42)])[0], _one(lanes, 0, boom)
    assert (await ok.wait()).unwrap() == 42
    with pytest.raises(RuntimeError, match="on fire"):
        (await bad.wait()).unwrap()


async def test_jobs_run_with_nobody_waiting(running: Any) -> None:
    """Submitting is enough: a job nobody awaits runs, and the lane moves on past it."""
    lanes = await _started(running)
    ran: list[str] = []
    _one(lanes, 0, lambda: ran.append("restore"))
    with trio.fail_after(5):
        while len(ran) < 1:
            await trio.sleep(0.001)
        await _one(lanes, 0, lambda: ran.append("next")).wait()
    assert ran == ["restore", "next"]


async def test_cancelled_waiter_strands_nothing(running: Any) -> None:
    """A waiter cancelled while its job is queued leaves the job, and the lane, running."""
    lanes = await _started(running, gpus=2, threads=2)
    release = threading.Event()
    slow = _one(lanes, 0, lambda: release.wait(5))
    behind = _one(lanes, 0, lambda: "behind")
    with trio.move_on_after(0.05):
        await behind.wait()
    assert behind.result is None
    release.set()
    with trio.fail_after(5):
        assert (await slow.wait()).unwrap() is True
        assert (await behind.wait()).unwrap() == "behind"


async def test_head_waiter_busy_elsewhere_holds_up_no_lane(running: Any) -> None:
    """The batch case: one task awaiting GPU 0 then GPU 1 does not delay GPU 1's queue."""
    lanes = await _started(running, gpus=2, threads=2)
    release = threading.Event()
    first = _one(lanes, 0, lambda: release.wait(5))
    second = _one(lanes, 1, lambda: "gpu1 for the batch")
    other = _one(lanes, 1, lambda: "gpu1 for someone else")
    async with trio.open_nursery() as nursery:

        async def batch() -> None:  # awaits its members in turn, as the dispatcher does
            await first.wait()
            await second.wait()

        nursery.start_soon(batch)
        with trio.fail_after(5):
            assert (await other.wait()).unwrap() == "gpu1 for someone else"
        assert first.result is None
        release.set()


async def test_stuck_gpu_holds_one_worker_and_blocks_no_other(running: Any) -> None:
    """While GPU 0's call hangs, GPU 1 keeps working and only one more thread is used."""
    lanes = await _started(running, gpus=2, threads=2)
    release = threading.Event()
    stuck = _one(lanes, 0, lambda: release.wait(5))
    queued_behind = _one(lanes, 0, lambda: "after")
    with trio.fail_after(5):
        for n in range(20):
            assert (await _one(lanes, 1, lambda n=n: n).wait()).unwrap() == n
    assert stuck.result is None
    assert queued_behind.result is None
    release.set()
    with trio.fail_after(5):
        assert (await queued_behind.wait()).unwrap() == "after"


async def test_one_thread_serves_alternating_gpus_without_a_hop(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one thread and two GPUs, alternating calls reuse the lingering thread."""
    hops: list[int] = []
    real_run_sync = trio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        hops.append(1)
        return await real_run_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    lanes = await _started(running, gpus=2, threads=1)
    for n in range(100):
        assert (await _one(lanes, n % 2, lambda n=n: n).wait()).unwrap() == n
    # One hop, or a few where the noisy machine let a lingering period run out.
    assert len(hops) < 20


async def test_backlog_on_one_gpu_does_not_starve_another(running: Any) -> None:
    """With one thread for two lanes, a long backlog on GPU 0 does not starve GPU 1."""
    lanes = await _started(running, gpus=2, threads=1)
    order: list[str] = []

    def slow(n: int) -> None:
        time.sleep(0.0005)
        order.append(f"gpu0-{n}")

    backlog = [_one(lanes, 0, lambda n=n: slow(n)) for n in range(200)]
    await trio.sleep(0.01)
    await _one(lanes, 1, lambda: order.append("gpu1")).wait()
    for job in backlog:
        await job.wait()
    assert order.index("gpu1") < 150
    assert [o for o in order if o != "gpu1"] == [f"gpu0-{n}" for n in range(200)]


async def test_consecutive_reads_of_one_kind_share_one_call(running: Any) -> None:
    """Reads with the same key queued back to back run once; a write between splits them."""
    lanes = await _started(running)
    release = threading.Event()
    calls: list[str] = []
    _one(lanes, 0, lambda: release.wait(5))  # holds the lane while the rest queue up

    def read() -> int:
        calls.append("read")
        return len(calls)

    def write() -> None:
        calls.append("write")

    first = [_one(lanes, 0, read, key="limit") for _ in range(50)]
    other_kind = _one(lanes, 0, read, key="power")
    written = _one(lanes, 0, write)
    after = [_one(lanes, 0, read, key="limit") for _ in range(50)]
    release.set()
    values = [(await job.wait()).unwrap() for job in (*first, other_kind, *after)]
    await written.wait()
    assert calls == ["read", "read", "write", "read"]
    assert values == [1] * 50 + [2] + [4] * 50


async def test_lane_and_owner_limits(running: Any) -> None:
    """Beyond the per-lane or per-owner limit, submit refuses, all or nothing."""
    lanes = await _started(running, gpus=2, max_queued=5, max_queued_per_owner=3)
    release = threading.Event()
    held = [_one(lanes, 0, lambda: release.wait(5), owner="a") for _ in range(3)]
    with pytest.raises(LaneFullError, match="3 requests of this connection") as caught:
        lanes.submit([(1, lambda: None), (0, lambda: None)], owner="a")
    assert caught.value.per_owner
    assert caught.value.gpu == 0
    assert lanes.busy() == [0]  # GPU 1 got nothing: refused whole
    held += [_one(lanes, 0, lambda: None, owner="b") for _ in range(2)]
    with pytest.raises(LaneFullError, match="5 requests queued") as caught:
        _one(lanes, 0, lambda: None, owner="c")
    assert not caught.value.per_owner
    release.set()
    for job in held:
        await job.wait()
    _one(lanes, 0, lambda: None, owner="a")  # room again once they finished


async def test_close_refuses_new_jobs_but_runs_queued_ones() -> None:
    """After close() submit fails, jobs already queued still run, and run() returns."""
    lanes = GpuLanes(1, trio.CapacityLimiter(1))
    with pytest.raises(LaneClosedError):  # nothing could run them yet
        _one(lanes, 0, lambda: None)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(lanes.run)
            queued = _one(lanes, 0, lambda: "queued")
            lanes.close()
            with pytest.raises(LaneClosedError):
                _one(lanes, 0, lambda: None)
    assert queued.result is not None
    assert queued.result.unwrap() == "queued"


async def test_abandon_fails_what_is_left_and_calls_hooks() -> None:
    """abandon() answers every unfinished job with LaneClosedError, even behind a hung call."""
    lanes = GpuLanes(2, trio.CapacityLimiter(2))
    release = threading.Event()
    hooks: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(lanes.run)
            stuck = _one(lanes, 0, release.wait)
            behind = _one(lanes, 0, lambda: None, on_abandon=lambda: hooks.append("restore"))
            done = _one(lanes, 1, lambda: "fine")
            await done.wait()
            await trio.sleep(0.01)
            assert lanes.busy() == [0]
            assert lanes.abandon() == [stuck, behind]
    for job in (stuck, behind):
        assert job.result is not None
        with pytest.raises(LaneClosedError):
            job.result.unwrap()
    assert hooks == ["restore"]
    release.set()
