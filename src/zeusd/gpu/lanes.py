"""Per-GPU work lanes: blocking NVML calls run one at a time per GPU, in submission order.

``submit`` is synchronous on purpose: the dispatcher calls it while handling the line it has
just read, before any checkpoint, so jobs enter each lane in the order requests were read,
across all connections.

A lane runs its jobs in a worker thread obtained with ``trio.to_thread.run_sync`` under the
daemon's CapacityLimiter. Rather than one thread hop per call, the worker stays on the lane
while work keeps coming: it takes jobs from a thread-safe queue in order, hands each outcome
back the moment it is known (``TrioToken.run_sync_soon``), and returns its thread once the
lane has been idle for LINGER_S, or after a SLICE_S turn when other lanes are waiting for a
thread. A GPU
whose driver call hangs ties up one worker thread and its own lane, and nothing else.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

#: How long an idle worker waits for the lane's next job before giving its thread back.
LINGER_S = 0.002
#: How long a busy worker keeps its thread once another lane is waiting for one.
SLICE_S = 0.001


class LaneClosedError(Exception):
    """The daemon stopped before this job could run."""


class Job:
    """A blocking call queued on one GPU's lane, and its eventual outcome."""

    __slots__ = ("_done", "_wake", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[Any] | None = None
        # Set when the result is in, or when this job's owner must start a worker.
        self._wake = trio.Event()
        # Made only for watch(), which most jobs never need.
        self._done: trio.Event | None = None

    def finish(self, result: outcome.Outcome[Any]) -> None:
        if self.result is None:  # an abandoned worker may report after the daemon gave up
            self.result = result
            self._wake.set()
            if self._done is not None:
                self._done.set()

    async def watch(self) -> outcome.Outcome[Any]:
        """Wait for the outcome without driving the lane (for detached jobs)."""
        if self.result is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        assert self.result is not None
        return self.result


class _Demand:
    """How many lanes wait for a worker thread; read by workers to know when to step aside.

    Kept here rather than read from the CapacityLimiter, whose statistics are not safe to
    take from another thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0

    def ask(self) -> list[bool]:
        """A lane asks for a thread; returns the ticket to pass to got() or gave_up()."""
        with self._lock:
            self.waiting += 1
        return [False]

    def got(self, ticket: list[bool]) -> None:
        with self._lock:
            if not ticket[0]:
                ticket[0] = True
                self.waiting -= 1

    gave_up = got


class GpuLane:
    """One GPU's FIFO of jobs; see the module docstring for who runs them."""

    def __init__(self, limiter: trio.CapacityLimiter, demand: _Demand) -> None:
        self._limiter = limiter
        self._demand = demand
        self._inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
        #: Jobs submitted and not finished, oldest first (trio side only).
        self._pending: deque[Job] = deque()
        self._worker = False
        self._closed = False
        self._abandoned = False
        #: Where worker tasks run (set by GpuLanes.run); None: the waiting task hosts one.
        self.nursery: trio.Nursery | None = None

    def submit(self, fn: Callable[[], Any]) -> Job:
        if self._closed:
            raise LaneClosedError("the daemon is shutting down")
        job = Job(fn)
        self._pending.append(job)
        self._inbox.put(job)
        return job

    def close(self) -> None:
        self._closed = True

    def _finished(self, job: Job, result: outcome.Outcome[Any]) -> None:
        job.finish(result)
        if self._pending and self._pending[0] is job:
            self._pending.popleft()

    async def wait(self, job: Job) -> outcome.Outcome[Any]:
        """Return *job*'s outcome, starting the lane's worker if nobody has."""
        while job.result is None:
            if not self._worker and self._pending and self._pending[0] is job:
                # _worker is set before any checkpoint, so only one worker starts.
                self._worker = True
                if self.nursery is None:
                    await self._work()
                    continue
                # The worker lingers after this job; this task must not wait for that.
                self.nursery.start_soon(self._work)
            if job._wake.is_set():
                job._wake = trio.Event()
            await job._wake.wait()
        return job.result

    async def _work(self) -> None:
        token = trio.lowlevel.current_trio_token()
        demand, inbox = self._demand, self._inbox
        ticket = demand.ask()

        def serve() -> None:
            demand.got(ticket)
            turn_ends = math.inf
            while not self._abandoned:
                try:
                    job = inbox.get(timeout=LINGER_S)
                except queue.Empty:
                    return
                token.run_sync_soon(self._finished, job, outcome.capture(job.fn))
                if demand.waiting:
                    # Another lane waits for a thread: take turns, but in slices, so a
                    # backlog still shares hops instead of paying one per call.
                    now = time.monotonic()
                    turn_ends = min(turn_ends, now + SLICE_S)
                    if now >= turn_ends:
                        return

        try:
            # abandon_on_cancel: at a forced shutdown, a call stuck in the driver must not
            # keep the daemon from exiting.
            await trio.to_thread.run_sync(serve, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            self._abandoned = True
            demand.gave_up(ticket)
            for job in self._pending:
                job.finish(outcome.Error(LaneClosedError("the daemon stopped")))
            raise
        finally:
            self._worker = False
        if self._pending:
            self._pending[0]._wake.set()  # came in as the worker left: its owner takes over


class GpuLanes:
    """One lane per GPU index, all sharing one CapacityLimiter."""

    def __init__(self, gpu_count: int, limiter: trio.CapacityLimiter) -> None:
        demand = _Demand()
        self._lanes: Sequence[GpuLane] = [GpuLane(limiter, demand) for _ in range(gpu_count)]
        self._closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the lanes' worker tasks until close(); then let the running ones finish."""
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

    def submit_detached(self, gpu: int, fn: Callable[[], Any]) -> Job:
        """Queue *fn* with nobody to await it (e.g. a restore after its client left).

        A lane only moves when someone waits on its head job, so a waiter task is started
        for it here, in the nursery of run(), which outlives every connection.
        """
        lane = self._lanes[gpu]
        if lane.nursery is None:
            raise LaneClosedError("the lanes are not running")
        job = lane.submit(fn)
        lane.nursery.start_soon(lane.wait, job)
        return job

    def close(self) -> None:
        """Accept no more jobs; what is queued still runs."""
        for lane in self._lanes:
            lane.close()
        self._closed.set()
