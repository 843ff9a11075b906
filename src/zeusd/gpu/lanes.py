"""Per-GPU work lanes: blocking NVML calls run one at a time per GPU, in submission order.

``submit`` is synchronous: the dispatcher calls it while handling the line it has just read,
so jobs enter each lane in the order requests were read, across all connections. Submitting
is also what makes work run: worker threads (as many as the CapacityLimiter lends, started
by ``submit``) serve the lanes that have jobs, one job at a time, taking turns; waiting for a
job only waits. A worker is not tied to a lane, and lingers LINGER_S for more work before
giving its thread back. A lane has one worker at a time, so a GPU whose call hangs holds
one thread and its own lane, nothing else. Reads queued back to back with the same ``key``
share one driver call. A lane holds at most ``max_queued`` jobs, ``max_queued_per_owner``
of one owner (a connection).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import outcome
import trio

#: How long an idle worker waits for more work before giving its thread back.
LINGER_S = 0.002
DEFAULT_MAX_QUEUED = 65536
DEFAULT_MAX_QUEUED_PER_OWNER = 1024


class LaneClosedError(Exception):
    """The daemon stopped before this job could run."""


class LaneFullError(Exception):
    """A lane holds as many jobs as it may (in all, or of this owner)."""

    def __init__(self, gpu: int, limit: int, *, per_owner: bool) -> None:
        whose = "of this connection " if per_owner else ""
        super().__init__(f"GPU {gpu} has {limit} requests {whose}queued, the most allowed")
        self.gpu, self.limit, self.per_owner = gpu, limit, per_owner


class Job:
    """A blocking call queued on one GPU's lane, and its eventual outcome."""

    __slots__ = ("_done", "fn", "gpu", "key", "notify", "on_abandon", "owner", "result")

    def __init__(
        self,
        gpu: int,
        fn: Callable[[], Any],
        key: Hashable | None = None,
        owner: Hashable | None = None,
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        self.gpu, self.fn, self.key, self.owner = gpu, fn, key, owner
        self.on_abandon = on_abandon  # called (in trio) if the daemon stops without running it
        self.result: outcome.Outcome[Any] | None = None
        self._done = trio.Event()
        #: Called (in trio) once the job has its outcome; must not raise.
        self.notify: Callable[[], None] | None = None

    def finish(self, result: outcome.Outcome[Any]) -> None:
        if self.result is None:  # an abandoned worker may report after the daemon gave up
            self.result = result
            self._done.set()
            if self.notify is not None:
                self.notify()

    async def wait(self) -> outcome.Outcome[Any]:
        """The job's outcome, once it has one. Cancelling this wait leaves the job queued."""
        await self._done.wait()
        assert self.result is not None
        return self.result


class _Lane:
    __slots__ = ("jobs", "owners", "queued", "running", "served")

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()  # not started; guarded by GpuLanes._cond
        self.running: list[Job] = []  # the call under way, and who shares it
        self.served = False  # a worker holds this lane now
        self.queued = 0  # unfinished jobs (trio side only), and per owner:
        self.owners: Counter[Hashable] = Counter()


class GpuLanes:
    """One lane per GPU index, served by worker threads under one CapacityLimiter."""

    def __init__(
        self,
        gpu_count: int,
        limiter: trio.CapacityLimiter,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_queued_per_owner: int = DEFAULT_MAX_QUEUED_PER_OWNER,
    ) -> None:
        self._limiter = limiter
        self._max_queued, self._max_per_owner = max_queued, max_queued_per_owner
        self._lanes: Sequence[_Lane] = [_Lane() for _ in range(gpu_count)]
        self._cond = threading.Condition()
        # Guarded by _cond: lanes with jobs and no worker, oldest first; workers by state.
        self._ready: deque[_Lane] = deque()
        self._idle = self._starting = self._threads = 0
        self._closed = self._abandoned = False
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the workers; after close(), return once everything queued has run."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._stop.wait()
            except trio.Cancelled:
                self.abandon()  # cancelled from outside: nothing more can run
                raise

    def submit(
        self,
        work: Sequence[tuple[int, Callable[[], Any]]],
        *,
        key: Hashable | None = None,
        owner: Hashable | None = None,
        on_abandon: Callable[[], None] | None = None,
    ) -> list[Job]:
        """Queue each (gpu, fn) of *work* on its lane, all or none; never blocks.

        Raises LaneClosedError once closed (or before run()), LaneFullError at a limit.
        """
        if self._closed or self._nursery is None:
            raise LaneClosedError("the daemon is stopping" if self._closed else "not running")
        for gpu, _ in work:
            lane = self._lanes[gpu]
            if lane.queued >= self._max_queued:
                raise LaneFullError(gpu, self._max_queued, per_owner=False)
            if owner is not None and lane.owners[owner] >= self._max_per_owner:
                raise LaneFullError(gpu, self._max_per_owner, per_owner=True)
        jobs = [Job(gpu, fn, key, owner, on_abandon) for gpu, fn in work]
        with self._cond:
            for job in jobs:
                lane = self._lanes[job.gpu]
                lane.queued += 1
                if owner is not None:
                    lane.owners[owner] += 1
                if not lane.jobs and not lane.served:
                    self._ready.append(lane)
                lane.jobs.append(job)
            wanted = len(self._ready) - self._idle - self._starting
            room = int(self._limiter.total_tokens) - self._threads - self._starting
            start = max(0, min(wanted, room))
            self._starting += start
            if self._idle:
                self._cond.notify(len(self._ready))
        for _ in range(start):
            self._nursery.start_soon(self._worker)
        return jobs

    def close(self) -> None:
        """Accept no more jobs; what is queued still runs, then run() returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()

    def busy(self) -> list[int]:
        """The GPUs with unfinished jobs."""
        return [gpu for gpu, lane in enumerate(self._lanes) if lane.queued]

    def abandon(self) -> list[Job]:
        """Stop now: fail every unfinished job with LaneClosedError and return them.

        A call stuck in the driver keeps its thread, but nobody waits for it any more.
        """
        with self._cond:
            self._closed = self._abandoned = True
            jobs = [job for lane in self._lanes for job in (*lane.running, *lane.jobs)]
            for lane in self._lanes:
                lane.jobs.clear()
            self._cond.notify_all()
        for job in jobs:
            self._settle(job, outcome.Error(LaneClosedError("the daemon stopped before this ran")))
            if job.on_abandon is not None:
                job.on_abandon()
        self._stop.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return jobs

    # -- workers ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        # abandon_on_cancel: at a forced stop, a call stuck in the driver must not keep the
        # daemon from exiting.
        await trio.to_thread.run_sync(self._serve, limiter=self._limiter, abandon_on_cancel=True)

    def _serve(self) -> None:
        lane: _Lane | None = None
        batch: list[Job] = []
        with self._cond:
            self._starting -= 1
            self._threads += 1
        try:
            while True:
                with self._cond:
                    if lane is not None:
                        lane.running, lane.served = [], False
                        if lane.jobs:
                            self._ready.append(lane)  # behind the other ready lanes
                    lane = self._claim()
                    if lane is None:
                        return
                    batch = lane.running = _take(lane.jobs)
                result = outcome.capture(batch[0].fn)
                self._token.run_sync_soon(self._finished, batch, result)
        except trio.RunFinishedError:
            pass  # abandoned, and trio is gone: nobody is left to tell
        finally:
            with self._cond:
                self._threads -= 1

    def _claim(self) -> _Lane | None:
        """The next ready lane, lingering for one up to LINGER_S (with _cond held)."""
        deadline = time.monotonic() + LINGER_S
        while not self._abandoned:
            if self._ready:
                lane = self._ready.popleft()
                lane.served = True
                return lane
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return None
            self._idle += 1
            self._cond.wait(left)
            self._idle -= 1
        return None

    def _finished(self, batch: list[Job], result: outcome.Outcome[Any]) -> None:
        for job in batch:  # an outcome unwraps once: each sharer gets its own copy
            self._settle(job, _copy(result) if len(batch) > 1 else result)

    def _settle(self, job: Job, result: outcome.Outcome[Any]) -> None:
        if job.result is not None:
            return
        lane = self._lanes[job.gpu]
        lane.queued -= 1
        if job.owner is not None:
            lane.owners[job.owner] -= 1
            if not lane.owners[job.owner]:
                del lane.owners[job.owner]
        job.finish(result)


def _copy(result: outcome.Outcome[Any]) -> outcome.Outcome[Any]:
    if isinstance(result, outcome.Value):
        return outcome.Value(result.value)
    assert isinstance(result, outcome.Error)
    return outcome.Error(result.error)


def _take(jobs: deque[Job]) -> list[Job]:
    """The next job and the ones right behind it that can share its call."""
    batch = [jobs.popleft()]
    key = batch[0].key
    if key is not None:
        while jobs and jobs[0].key == key:
            batch.append(jobs.popleft())
    return batch
