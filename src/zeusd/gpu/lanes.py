"""Per-GPU work lanes: blocking NVML calls run one at a time per GPU, in submission order.

Each GPU has a queue served by one task, which runs each job with ``trio.to_thread`` under
the daemon's shared CapacityLimiter. So a GPU whose driver call hangs ties up one worker
thread and its own queue, and nothing else: other GPUs and non-GPU methods keep going.

``submit`` is synchronous on purpose: the dispatcher calls it while handling the line it has
just read, before any checkpoint, so jobs enter each queue in the order requests were read,
across all connections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio


class LaneClosedError(Exception):
    """The daemon stopped before this job could run."""


class Job:
    """A blocking call queued on one GPU's lane, and its eventual outcome."""

    __slots__ = ("_done", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[Any] | None = None
        self._done = trio.Event()

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self._done.set()

    async def wait(self) -> outcome.Outcome[Any]:
        await self._done.wait()
        assert self.result is not None
        return self.result


class GpuLanes:
    """One FIFO lane per GPU index. Start with ``await nursery.start(lanes.run)``."""

    def __init__(self, gpu_count: int, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        channels = [trio.open_memory_channel[Job](math.inf) for _ in range(gpu_count)]
        self._senders: Sequence[trio.MemorySendChannel[Job]] = [s for s, _ in channels]
        self._receivers: Sequence[trio.MemoryReceiveChannel[Job]] = [r for _, r in channels]

    def submit(self, gpu: int, fn: Callable[[], Any]) -> Job:
        """Queue *fn* on GPU *gpu*'s lane; never blocks. Raises LaneClosedError after close()."""
        job = Job(fn)
        try:
            self._senders[gpu].send_nowait(job)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LaneClosedError("the daemon is shutting down") from None
        return job

    def close(self) -> None:
        """Accept no more jobs; lanes exit once what is queued has run."""
        for sender in self._senders:
            sender.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for receiver in self._receivers:
                nursery.start_soon(self._serve, receiver)
            task_status.started()

    async def _serve(self, receiver: trio.MemoryReceiveChannel[Job]) -> None:
        async with receiver:
            async for job in receiver:
                try:
                    # abandon_on_cancel: at a forced shutdown, a call stuck in the driver
                    # must not keep the daemon from exiting.
                    result = await trio.to_thread.run_sync(
                        outcome.capture, job.fn, limiter=self._limiter, abandon_on_cancel=True
                    )
                except trio.Cancelled:
                    job.finish(outcome.Error(LaneClosedError("the daemon stopped")))
                    raise
                job.finish(result)
