"""Per-GPU lanes: blocking driver calls run one at a time per GPU, in submission order.

``submit`` never blocks: the dispatcher calls it while handling the line it has just read, so
each GPU gets its jobs in the order requests were read, across all connections. Submitting is
what makes work run: it starts a worker thread (as many as the CapacityLimiter lends) unless
a free one will take the GPU; waiting for a job only waits. A worker serves the oldest ready
GPU one call at a time, puts it back at the end while it has more, and with nothing ready
lingers LINGER_S, then ends. No GPU has two workers, so a hung call holds one thread and its
own GPU. A read queued right behind a call not started yet with the same ``key`` joins that
call. A GPU holds at most ``max_queued`` unfinished jobs, ``max_queued_per_owner`` of one
owner (a connection).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs
import outcome
import trio

#: How long an idle worker waits for more work before giving its thread back.
LINGER_S = 0.002


class LaneClosedError(Exception):
    """The daemon stopped before this job could run."""


class LaneFullError(Exception):
    """A lane holds as many jobs as it may (in all, or of this owner)."""

    def __init__(self, gpu: int, limit: int, *, per_owner: bool) -> None:
        whose = "of this connection " if per_owner else ""
        super().__init__(f"GPU {gpu} has {limit} requests {whose}queued, the most allowed")
        self.gpu, self.limit, self.per_owner = gpu, limit, per_owner


@attrs.define(eq=False)
class Job:
    """A blocking call queued on one GPU's lane, and its eventual outcome."""

    gpu: int
    fn: Callable[[], Any]
    key: Hashable | None = None
    owner: Hashable | None = None
    #: Called (in trio) if the daemon stops without running it.
    on_abandon: Callable[[], None] | None = None
    result: outcome.Outcome[Any] | None = attrs.field(default=None, init=False)
    #: Called (in trio) once the job has its outcome; must not raise.
    notify: Callable[[], None] | None = attrs.field(default=None, init=False)
    _done: trio.Event = attrs.field(factory=trio.Event, init=False)

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self._done.set()
        if self.notify is not None:
            self.notify()

    async def wait(self) -> outcome.Outcome[Any]:
        """The job's outcome, once it has one. Cancelling this wait leaves the job queued."""
        await self._done.wait()
        assert self.result is not None
        return self.result


class GpuLanes:
    """One lane per GPU index, served by worker threads under one CapacityLimiter."""

    def __init__(
        self,
        gpu_count: int,
        limiter: trio.CapacityLimiter,
        *,
        max_queued: int = 65536,
        max_queued_per_owner: int = 1024,
    ) -> None:
        self._limiter = limiter
        self._max_queued, self._max_per_owner = max_queued, max_queued_per_owner
        # Trio side: unfinished jobs in submission order, counted per GPU and (GPU, owner).
        self._unfinished: dict[Job, bool] = {}
        self._counts: Counter[Hashable] = Counter()
        # Guarded by _cond: each GPU's calls not started (a job and the reads sharing it),
        # the ready GPUs (oldest first), those ready or held by a worker, and the workers.
        self._cond = threading.Condition()
        self._calls: Sequence[deque[list[Job]]] = [deque() for _ in range(gpu_count)]
        self._ready: deque[int] = deque()
        self._scheduled: set[int] = set()
        self._threads, self._closed = 0, False
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
        """Queue each (gpu, fn) of *work* on its lane, all or none: LaneClosedError once
        closed (or before run()), LaneFullError at a limit."""
        if self._closed or self._nursery is None:
            raise LaneClosedError("the daemon is stopping" if self._closed else "not running")
        for gpu, _ in work:
            if self._counts[gpu] >= self._max_queued:
                raise LaneFullError(gpu, self._max_queued, per_owner=False)
            if owner is not None and self._counts[gpu, owner] >= self._max_per_owner:
                raise LaneFullError(gpu, self._max_per_owner, per_owner=True)
        jobs = [Job(gpu, fn, key, owner, on_abandon) for gpu, fn in work]
        for job in jobs:
            self._unfinished[job] = True
            self._counts[job.gpu] += 1
            self._counts[job.gpu, owner] += 1
        with self._cond:
            for job in jobs:
                calls = self._calls[job.gpu]
                if key is not None and calls and calls[-1][0].key == key:
                    calls[-1].append(job)
                else:
                    calls.append([job])
                if job.gpu not in self._scheduled:
                    self._scheduled.add(job.gpu)
                    self._ready.append(job.gpu)
            # One worker per GPU that is ready or held, as far as the limiter allows.
            wanted = min(len(self._scheduled), int(self._limiter.total_tokens))
            start = max(0, wanted - self._threads)
            self._threads += start
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
        return [gpu for gpu in range(len(self._calls)) if self._counts[gpu]]

    def abandon(self) -> list[Job]:
        """Stop now: fail every unfinished job with LaneClosedError and return them. A call
        stuck in the driver keeps its thread, but nobody waits for it any more."""
        with self._cond:
            self._ready.clear()
            for calls in self._calls:
                calls.clear()
        self.close()
        abandoned = list(self._unfinished)
        gone = LaneClosedError("the daemon stopped before this ran")
        self._finished(abandoned, outcome.Error(gone))
        for job in abandoned:
            if job.on_abandon is not None:
                job.on_abandon()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return abandoned

    def _finished(self, batch: list[Job], result: outcome.Maybe[Any]) -> None:
        for job in batch:
            if self._unfinished.pop(job, False):  # not settled yet (abandon() may have)
                self._counts[job.gpu] -= 1
                self._counts[job.gpu, job.owner] -= 1
                if not self._counts[job.gpu, job.owner]:
                    del self._counts[job.gpu, job.owner]  # owners come and go
                # An outcome unwraps once: each sharer of a call gets its own copy.
                job.finish(result if len(batch) == 1 else _copy(result))

    async def _worker(self) -> None:
        # abandon_on_cancel: a call stuck in the driver must not hold up a forced stop.
        await trio.to_thread.run_sync(self._serve, limiter=self._limiter, abandon_on_cancel=True)

    def _serve(self) -> None:
        """Serve the oldest ready GPU's next call, put it back if it has more, and so on."""
        gpu: int | None = None
        while True:
            with self._cond:
                if gpu is not None:
                    if self._calls[gpu]:
                        self._ready.append(gpu)  # behind the other ready GPUs
                    else:
                        self._scheduled.discard(gpu)
                self._cond.wait_for(lambda: self._ready or self._closed, LINGER_S)
                if not self._ready:
                    self._threads -= 1  # with the lock held: submit() sees it at once
                    return
                gpu = self._ready.popleft()
                batch = self._calls[gpu].popleft()
            try:
                self._token.run_sync_soon(self._finished, batch, outcome.capture(batch[0].fn))
            except trio.RunFinishedError:
                return  # abandoned, and trio is gone: nobody is left to tell


def _copy(result: outcome.Maybe[Any]) -> outcome.Outcome[Any]:
    if isinstance(result, outcome.Value):
        return outcome.Value(result.value)
    return outcome.Error(result.error)
