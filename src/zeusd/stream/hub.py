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

Samples go to each subscriber's :class:`Outbox`, which never blocks and keeps only the
newest unsent sample per subscription, so a slow reader slows nobody else. A sample names no
protocol; the subscriber's front end renders it.

Costs never grow with the number of subscriptions of others: subscribing and unsubscribing
touch only the subscription's own devices (each keeps a count of its subscribers per
interval and a heap of those intervals, for its fastest one), and a round looks only at the
subscribers that are due (a heap by due time) or that waited for a sample of a device that
just got one. How many subscriptions there are at all is capped by a shared
:class:`SubscriptionBudget`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import trio

from zeusd.gpu.lanes import Job
from zeusd.stream.outbox import Outbox, PowerSample

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


class SubscriptionLimitError(Exception):
    """Taking one more subscription would pass the daemon-wide limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the daemon has {limit} subscriptions, the most allowed")
        self.limit = limit


class SubscriptionBudget:
    """How many subscriptions the daemon holds, over every hub that shares this budget."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> None:
        if self.limit is not None and self.used >= self.limit:
            raise SubscriptionLimitError(self.limit)
        self.used += 1

    def give_back(self) -> None:
        self.used -= 1


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
    # Subscribers per interval, and those intervals as a heap (the fastest on top); an
    # interval nobody uses any more leaves the heap when it comes to the top.
    counts: dict[float, int] = attrs.field(factory=dict)
    intervals: list[float] = attrs.field(factory=list)
    # Subscribers that were due with nothing new to send: they go out with its next sample.
    waiting: dict[str, _Subscriber] = attrs.field(factory=dict)

    def add_interval(self, interval: float) -> None:
        count = self.counts.get(interval, 0)
        self.counts[interval] = count + 1
        if not count:
            heapq.heappush(self.intervals, interval)

    def remove_interval(self, interval: float) -> None:
        count = self.counts.pop(interval) - 1
        if count:
            self.counts[interval] = count
        elif len(self.intervals) > 2 * len(self.counts) + 8:
            # Unused intervals under a busy top pile up: rebuild (amortized O(1)).
            self.intervals = sorted(self.counts)

    def fastest(self) -> float | None:
        heap = self.intervals
        while heap and heap[0] not in self.counts:
            heapq.heappop(heap)
        # A value can be in the heap twice (used, unused, used again): harmless.
        return heap[0] if heap else None


@attrs.define(eq=False)
class _Subscriber:
    id: str
    devices: tuple[int, ...]
    interval: float
    outbox: Outbox
    due: float
    seen: dict[int, int]
    ended: bool = False
    # Bumped whenever it is (re)queued in the due heap, so older entries can be told stale.
    turn: int = 0


class PowerHub:
    """Subscriptions to the power of one kind of device. Run with ``nursery.start(hub.run)``."""

    def __init__(
        self,
        kind: str,
        source: PowerSource,
        device_ids: Iterable[int],
        budget: SubscriptionBudget | None = None,
    ) -> None:
        #: What the samples are of: "gpu" or "cpu".
        self.kind = kind
        self._source = source
        self._devices = {i: _Device(i) for i in device_ids}
        self._subs: dict[str, _Subscriber] = {}
        self._budget = budget or SubscriptionBudget()
        # (due, tie-breaker, turn, subscriber): who is next due. Entries whose subscriber
        # ended or was requeued since are skipped when they come up.
        self._due: list[tuple[float, int, int, _Subscriber]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self, devices: Iterable[int], interval_ms: int, outbox: Outbox) -> str:
        """Start a subscription (ids and interval already validated); returns its id.

        Raises SubscriptionLimitError when the shared budget is spent.
        """
        targets = tuple(devices)
        self._budget.take()
        sub_id = f"{self.kind}-{next(_ids)}"
        now = trio.current_time()
        sub = _Subscriber(
            sub_id,
            targets,
            interval_ms / 1000,
            outbox,
            due=now,
            seen={d: self._devices[d].seq for d in targets},
        )
        self._subs[sub_id] = sub
        self._queue(sub)
        for d in targets:
            dev = self._devices[d]
            dev.add_interval(sub.interval)
            self._retime(dev, now)
        self._changed.set()
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        """End a subscription; nothing more is put in its outbox from now on."""
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return
        sub.ended = True
        self._budget.give_back()
        now = trio.current_time()
        for d in sub.devices:
            dev = self._devices[d]
            dev.waiting.pop(sub_id, None)
            dev.remove_interval(sub.interval)
            self._retime(dev, now)
        self._prune()
        self._changed.set()

    def _retime(self, dev: _Device, now: float) -> None:
        """Poll *dev* at its fastest subscriber's interval (or not at all)."""
        interval = dev.fastest()
        if interval is not None and dev.interval is None:
            self._source.start(dev.id)
            dev.next_read = now
        elif interval is not None and dev.interval is not None and interval < dev.interval:
            dev.next_read = min(dev.next_read, now + interval)
        dev.interval = interval

    def _queue(self, sub: _Subscriber) -> None:
        sub.turn += 1
        heapq.heappush(self._due, (sub.due, next(self._order), sub.turn, sub))

    def _prune(self) -> None:
        """Entries of ended subscribers wait in the heap until their due time (up to an
        hour): rebuild it once they outnumber the live ones (amortized O(1))."""
        if len(self._due) > 2 * len(self._subs) + 16:
            self._due = [e for e in self._due if not e[3].ended and e[2] == e[3].turn]
            heapq.heapify(self._due)

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
                    await job.wait()
        fresh = self._harvest()
        self._deliver(trio.current_time(), fresh)

    def _harvest(self) -> list[_Device]:
        """Take finished reads; return the devices that got a new sample."""
        stamp = int(time.time() * 1000)
        fresh: list[_Device] = []
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
                fresh.append(dev)
        return fresh

    def _deliver(self, now: float, fresh: list[_Device]) -> None:
        # Who may have something to send: those due now, and those that were due but had
        # nothing new until one of their devices got a sample this round.
        candidates: dict[str, _Subscriber] = {}
        for dev in fresh:
            if dev.waiting:
                candidates.update(dev.waiting)
                dev.waiting = {}
        due = self._due
        while due and due[0][0] <= now + _SLACK_S:
            _, _, turn, sub = heapq.heappop(due)
            if not sub.ended and turn == sub.turn:
                candidates[sub.id] = sub
        # Subscribers of the same devices get the same values this round: made once, so
        # that a front end can also render them once (see rpc.dispatch.notification_line).
        shared: dict[tuple[int, ...], tuple[int, dict[str, Any]]] = {}
        for sub in candidates.values():
            if not sub.ended:
                self._offer(sub, now, shared)

    def _offer(
        self,
        sub: _Subscriber,
        now: float,
        shared: dict[tuple[int, ...], tuple[int, dict[str, Any]]],
    ) -> None:
        """*sub* is due: send its new samples, or wait for one of its devices' next."""
        fresh = [self._devices[d] for d in sub.devices if self._devices[d].seq > sub.seen[d]]
        if not fresh:
            for d in sub.devices:  # stays due: goes out with the next sample
                self._devices[d].waiting[sub.id] = sub
            return
        for d in sub.devices:
            self._devices[d].waiting.pop(sub.id, None)
        for dev in fresh:
            sub.seen[dev.id] = dev.seq
        ids = tuple(dev.id for dev in fresh)
        made = shared.get(ids)
        if made is None:
            made = shared[ids] = (
                max(dev.timestamp_ms for dev in fresh),
                {str(dev.id): dev.value for dev in fresh},
            )
        sample = PowerSample(self.kind, sub.id, *made)
        sub.outbox.put(sub.id, sample)
        sub.due += sub.interval
        if sub.due <= now:
            sub.due = now + sub.interval
        self._queue(sub)
