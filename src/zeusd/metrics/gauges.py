"""The GPU readings scrapes show: the newest of each, from a poller that runs while
scrapes come.

A scrape never waits on a GPU. The readings come from a :class:`~zeusd.stream.hub.PowerHub`
of their own (reads go through each GPU's lane, so they keep its order with the writes, and
a read still running is not started again, so a hung GPU holds one worker thread, not a
growing queue). :class:`GpuGauges` subscribes to it on the first scrape, as the subscriber's
outbox keeps the newest value of each reading with the time it came, and unsubscribes after
``idle_s`` without a scrape: a daemon nobody scrapes does no periodic work for its metrics.

A reading older than ``stale_s`` (a GPU whose read is stuck or failing) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from zeusd.stream.hub import PowerHub
from zeusd.stream.outbox import PowerSample

#: How often the GPUs are read while scrapes come.
SAMPLE_INTERVAL_MS = 1000
#: A reading this old is left out of the scrape (PROTOCOL.md section 9).
STALE_S = 10.0
#: Polling stops after this long without a scrape (Prometheus scrapes every 15 s to 1 min).
IDLE_S = 300.0
#: The first scrape after a pause waits this long at most for the poller's first readings
#: (a slow GPU's read is not waited for longer than half the interval by the hub), so it is
#: not empty; well under the 1 s a scrape must answer within.
FIRST_READINGS_S = 0.75


class GpuGauges:
    """The newest readings per GPU; the outbox of the hub subscription it holds."""

    def __init__(
        self,
        hub: PowerHub,
        gpu_ids: Sequence[int],
        *,
        stale_s: float = STALE_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self._hub = hub
        self._gpu_ids = tuple(gpu_ids)
        self._stale_s = stale_s
        self._idle_s = idle_s
        #: gpu -> reading name -> (trio time it came, value).
        self._latest: dict[int, dict[str, tuple[float, int]]] = {}
        self._subscription: str | None = None
        self._last_scrape = -math.inf
        self._polling = trio.Event()
        self._arrived = trio.Event()

    @property
    def polling(self) -> bool:
        return self._subscription is not None

    def scraped(self) -> bool:
        """A scrape came: keep polling (start if stopped). True if polling just started."""
        self._last_scrape = trio.current_time()
        if self._subscription is not None or not self._gpu_ids:
            return False
        self._arrived = trio.Event()
        self._subscription = self._hub.subscribe(self._gpu_ids, SAMPLE_INTERVAL_MS, self)
        self._polling.set()
        return True

    async def first_readings(self, timeout: float = FIRST_READINGS_S) -> None:
        """Wait until the poller has delivered once, or *timeout*."""
        with trio.move_on_after(timeout):
            await self._arrived.wait()

    def fresh(self) -> dict[int, dict[str, int]]:
        """Per GPU, its readings no older than ``stale_s``; a GPU with none is left out."""
        oldest = trio.current_time() - self._stale_s
        fresh: dict[int, dict[str, int]] = {}
        for gpu, readings in self._latest.items():
            values = {name: value for name, (at, value) in readings.items() if at >= oldest}
            if values:
                fresh[gpu] = values
        return fresh

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stop polling after ``idle_s`` without a scrape; sleeps on an event until then."""
        task_status.started()
        while True:
            await self._polling.wait()
            while (left := self._last_scrape + self._idle_s - trio.current_time()) > 0:
                await trio.sleep(left)
            self._stop()

    def _stop(self) -> None:
        if self._subscription is not None:
            self._hub.unsubscribe(self._subscription)
        self._subscription = None
        self._polling = trio.Event()
        self._latest.clear()

    # -- Outbox: the hub hands the readings here -----------------------------------------------

    def register(self, key: str) -> None:
        pass

    def put(self, key: str, sample: PowerSample) -> None:
        now = trio.current_time()
        for gpu, values in sample.power_mw.items():
            readings = self._latest.setdefault(int(gpu), {})
            for name, value in values.items():
                if value is not None:
                    readings[name] = (now, value)
        self._arrived.set()

    def drop(self, key: str) -> None:
        pass
