"""Per-GPU work lanes: blocking NVML calls run one at a time per GPU, in submission order.

``submit`` is synchronous on purpose: the dispatcher calls it while handling the line it has
just read, before any checkpoint, so jobs enter each lane in the order requests were read,
across all connections.

There is no task per lane, because waking one costs a scheduler round per call. Whoever
awaits a job and finds its lane idle with that job at the head starts the lane:
- alone in the queue (the common, latency-bound case), the job runs right there, in one
  ``trio.to_thread.run_sync`` hop made by the waiting task itself;
- behind it a backlog (the throughput-bound case), up to MAX_JOBS_PER_HOP queued jobs run in
  order in one hop, made by a helper task, so they share one thread hop. Each outcome is
  handed back the moment it is known (``TrioToken.run_sync_soon``): batching never holds a
  reply back behind the jobs after it.
All hops go through the daemon's one CapacityLimiter. A GPU whose driver call hangs ties up
one worker thread and its own lane, and nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

#: Jobs one thread hop may take from a backlog; bounds how long a runner keeps its thread.
MAX_JOBS_PER_HOP = 64


class LaneClosedError(Exception):
    """The daemon stopped before this job could run."""


class Job:
    """A blocking call queued on one GPU's lane, and its eventual outcome."""

    __slots__ = ("_wake", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[Any] | None = None
        # Set when the result is in, or when this job's owner must take over the lane.
        self._wake = trio.Event()

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self._wake.set()


class GpuLane:
    """One GPU's FIFO of jobs; see the module docstring for who runs them."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._queue: deque[Job] = deque()
        self._running = False
        self._closed = False
        #: Where batch hops run; None (tests, before start): the waiting task runs them.
        self.nursery: trio.Nursery | None = None

    def submit(self, fn: Callable[[], Any]) -> Job:
        if self._closed:
            raise LaneClosedError("the daemon is shutting down")
        job = Job(fn)
        self._queue.append(job)
        return job

    def close(self) -> None:
        self._closed = True

    async def wait(self, job: Job) -> outcome.Outcome[Any]:
        """Return *job*'s outcome, running this lane's queue if nobody else is."""
        while job.result is None:
            if not self._running and self._queue and self._queue[0] is job:
                # _running is set before the first checkpoint, so no one else starts too.
                self._running = True
                count = min(len(self._queue), MAX_JOBS_PER_HOP)
                batch = [self._queue.popleft() for _ in range(count)]
                if count == 1 or self.nursery is None:
                    await self._run(batch)
                    continue
                self.nursery.start_soon(self._run, batch)
            job._wake = trio.Event() if job._wake.is_set() else job._wake
            if job.result is None:
                await job._wake.wait()
        return job.result

    async def _run(self, batch: list[Job]) -> None:
        token = trio.lowlevel.current_trio_token()

        def run_in_thread() -> None:
            for job in batch:
                token.run_sync_soon(job.finish, outcome.capture(job.fn))

        try:
            # abandon_on_cancel: at a forced shutdown, a call stuck in the driver must not
            # keep the daemon from exiting.
            await trio.to_thread.run_sync(
                run_in_thread, limiter=self._limiter, abandon_on_cancel=True
            )
        finally:
            self._running = False
            for job in batch:
                if job.result is None:  # abandoned mid-batch at a forced shutdown
                    job.finish(outcome.Error(LaneClosedError("the daemon stopped")))
            if self._queue:
                self._queue[0]._wake.set()  # its owner runs the next batch


class GpuLanes:
    """One lane per GPU index, all sharing one CapacityLimiter."""

    def __init__(self, gpu_count: int, limiter: trio.CapacityLimiter) -> None:
        self._lanes: Sequence[GpuLane] = [GpuLane(limiter) for _ in range(gpu_count)]
        self._closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the batch hops until close(); then let the running ones finish."""
        async with trio.open_nursery() as nursery:
            for lane in self._lanes:
                lane.nursery = nursery
            task_status.started()
            await self._closed.wait()

    def submit(self, gpu: int, fn: Callable[[], Any]) -> Job:
        """Queue *fn* on GPU *gpu*'s lane; never blocks. Raises LaneClosedError after close()."""
        return self._lanes[gpu].submit(fn)

    async def wait(self, gpu: int, job: Job) -> outcome.Outcome[Any]:
        return await self._lanes[gpu].wait(job)

    def close(self) -> None:
        """Accept no more jobs; what is queued still runs."""
        for lane in self._lanes:
            lane.close()
        self._closed.set()
