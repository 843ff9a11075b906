"""One power hub per device kind: polls each subscribed device, fans samples out.

Each device is read at the fastest interval any of its subscribers asked for, once per tick
whatever the number of subscribers; each subscriber gets the newest samples of its devices
at its own interval. Devices due at the same moment are read together, so a subscriber of
several devices gets them in one notification. With no subscribers the hub's task waits on
an event: no timers, no periodic work.

A read that outlasts half the interval is not waited for: that round's notifications go
out without it, and the device is not read again until the slow read has finished (its
sample is then used), so a stuck GPU never stalls the others. A failing read sends nothing
for that device and is logged once per run of failures.

Notifications go to each subscriber's :class:`Outbox`, which never blocks and keeps only
the newest unsent line per subscription, so a slow reader slows nobody else.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import trio

from zeusd.gpu.lanes import Job
from zeusd.rpc.session import Outbox

log = logging.getLogger(__name__)

#: Subscription intervals, milliseconds. The ceiling keeps a typo (seconds for
#: milliseconds) from looking like a dead stream.
MIN_INTERVAL_MS = 10
DEFAULT_INTERVAL_MS = 50
MAX_INTERVAL_MS = 3_600_000
#: Timer jitter tolerated when deciding that something is due.
_SLACK_S = 0.001

_ids = itertools.count(1)


class PowerSource(Protocol):
    """How a hub reads one device's power."""

    #: Names devices in log lines ("GPU", "CPU").
    kind: str

    def start(self, device: int) -> None:
        """*device* is about to be polled after a pause (forget any stale state)."""

    def submit(self, device: int) -> Job:
        """Begin one read; the job's value is the sample, or None for no sample yet."""


@attrs.define(eq=False)
class _Device:
    id: int
    interval: float | None = None  # seconds; None: nobody subscribes
    next_read: float = 0.0
    job: Job | None = None
    seq: int = 0  # bumped per sample, so subscribers can tell new from seen
    value: Any = None
    timestamp_ms: int = 0
    failures: int = 0


@attrs.define(eq=False)
class _Subscriber:
    id: str
    devices: tuple[int, ...]
    interval: float
    outbox: Outbox
    due: float
    seen: dict[int, int]


class PowerHub:
    """Subscriptions to the power of one kind of device. Run with ``nursery.start(hub.run)``."""

    def __init__(self, method: str, source: PowerSource, device_ids: Iterable[int]) -> None:
        #: The notification method, e.g. "gpu.power".
        self.method = method
        self._source = source
        self._devices = {i: _Device(i) for i in device_ids}
        self._subs: dict[str, _Subscriber] = {}
        self._changed = trio.Event()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self, devices: Iterable[int], interval_ms: int, outbox: Outbox) -> str:
        """Start a subscription (ids and interval already validated); returns its id."""
        targets = tuple(devices)
        sub_id = f"{self.method.split('.')[0]}-{next(_ids)}"
        self._subs[sub_id] = _Subscriber(
            sub_id,
            targets,
            interval_ms / 1000,
            outbox,
            due=trio.current_time(),
            seen={d: self._devices[d].seq for d in targets},
        )
        self._reschedule()
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        """End a subscription; nothing more is put in its outbox from now on."""
        if self._subs.pop(sub_id, None) is not None:
            self._reschedule()

    def _reschedule(self) -> None:
        now = trio.current_time()
        fastest: dict[int, float] = {}
        for sub in self._subs.values():
            for d in sub.devices:
                fastest[d] = min(fastest.get(d, math.inf), sub.interval)
        for dev in self._devices.values():
            interval = fastest.get(dev.id)
            if interval is not None and dev.interval is None:
                self._source.start(dev.id)
                dev.next_read = now
            elif interval is not None and dev.interval is not None and interval < dev.interval:
                dev.next_read = min(dev.next_read, now + interval)
            dev.interval = interval
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._changed = trio.Event()
            wake = min((d.next_read for d in self._devices.values() if d.interval), default=None)
            if wake is None:
                await self._changed.wait()
            elif wake > trio.current_time() + _SLACK_S:
                with trio.move_on_at(wake):
                    await self._changed.wait()
            else:
                await self._round()

    async def _round(self) -> None:
        now = trio.current_time()
        started: list[tuple[_Device, Job]] = []
        for dev in self._devices.values():
            if dev.interval is None or dev.next_read > now + _SLACK_S:
                continue
            dev.next_read += dev.interval
            if dev.next_read <= now:  # fell behind (a slow round): skip ticks, never burst
                dev.next_read = now + dev.interval
            if dev.job is None:
                dev.job = self._source.submit(dev.id)
                started.append((dev, dev.job))
        if started:
            with trio.move_on_after(min(dev.interval or 0 for dev, _ in started) / 2):
                for _, job in started:
                    await job.watch()
        self._harvest()
        self._deliver(trio.current_time())

    def _harvest(self) -> None:
        stamp = int(time.time() * 1000)
        for dev in self._devices.values():
            job = dev.job
            if job is None or job.result is None:
                continue
            dev.job = None
            try:
                value = job.result.unwrap()
            except Exception as exc:
                dev.failures += 1
                if dev.failures == 1:
                    log.warning(
                        "%s %d: power read failed, skipping its samples until it works: %s",
                        self._source.kind,
                        dev.id,
                        exc,
                    )
                continue
            if dev.failures:
                log.info(
                    "%s %d: power reads work again after %d failed",
                    self._source.kind,
                    dev.id,
                    dev.failures,
                )
                dev.failures = 0
            if value is not None:
                dev.seq += 1
                dev.value = value
                dev.timestamp_ms = stamp

    def _deliver(self, now: float) -> None:
        for sub in self._subs.values():
            if sub.due > now + _SLACK_S:
                continue
            fresh = [self._devices[d] for d in sub.devices if self._devices[d].seq > sub.seen[d]]
            if not fresh:
                continue  # stays due: goes out with the next sample
            for dev in fresh:
                sub.seen[dev.id] = dev.seq
            params = {
                "subscription": sub.id,
                "timestamp_ms": max(dev.timestamp_ms for dev in fresh),
                "power_mw": {str(dev.id): dev.value for dev in fresh},
            }
            message = {"jsonrpc": "2.0", "method": self.method, "params": params}
            sub.outbox.put(sub.id, json.dumps(message, separators=(",", ":")).encode() + b"\n")
            sub.due += sub.interval
            if sub.due <= now:
                sub.due = now + sub.interval
