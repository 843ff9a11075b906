"""The power hub with a fake source on a virtual clock: sharing, rates, idleness, failures."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import outcome
import pytest
import trio

from zeusd.gpu.lanes import Job
from zeusd.rpc.dispatch import notification_line
from zeusd.stream.hub import PowerHub, SubscriptionBudget, SubscriptionLimitError
from zeusd.stream.outbox import PowerSample


class FakeSource:
    """Counts reads per device; a device's value or failure comes from *behaviour*."""

    kind = "GPU"

    def __init__(self, behaviour: Callable[[int, int], Any] = lambda d, n: 100 + d) -> None:
        self.reads: dict[int, int] = {}
        self.starts: list[int] = []
        self.behaviour = behaviour
        self.held: dict[int, Job] = {}

    def start(self, device: int) -> None:
        self.starts.append(device)

    def submit(self, device: int) -> Job:
        n = self.reads[device] = self.reads.get(device, 0) + 1
        job = Job(0, lambda: None)
        value = self.behaviour(device, n)
        if value == "hang":
            self.held[device] = job  # finished later by the test, or never
        elif isinstance(value, Exception):
            job.finish(outcome.Error(value))
        else:
            job.finish(outcome.Value(value))
        return job


class Recorder:
    """An outbox that keeps every line (the hub's side of the contract only)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[Any]] = {}

    def register(self, key: str) -> None:
        pass

    def put(self, key: str, sample: PowerSample) -> None:
        line = notification_line(sample)
        assert line.endswith(b"\n")
        self.lines.setdefault(key, []).append(json.loads(line))

    def drop(self, key: str) -> None:
        pass


async def run_hub(nursery: trio.Nursery, source: FakeSource, devices: int = 2) -> PowerHub:
    hub = PowerHub("gpu", source, range(devices))
    await nursery.start(hub.run)
    return hub


async def test_idle_hub_reads_nothing(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Without subscribers no device is read, however long the daemon idles."""
    source = FakeSource()
    await run_hub(nursery, source)
    await trio.sleep(3600)
    assert source.reads == {}


async def test_one_read_per_tick_shared_by_all_subscribers(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """Subscribers at 50 and 100 ms share one 50 ms poll; each gets its own rate."""
    source = FakeSource()
    hub = await run_hub(nursery, source)
    out = Recorder()
    fast = hub.subscribe([0], 50, out)
    slow = hub.subscribe([0], 100, out)
    crowd = [hub.subscribe([0], 50, out) for _ in range(20)]
    await trio.sleep(1.0)
    # 1 s at 50 ms is ~20 reads, not one per subscriber (the virtual clock is exact-ish).
    assert 19 <= source.reads[0] <= 22
    assert 1 not in source.reads
    assert 19 <= len(out.lines[fast]) <= 22
    assert 9 <= len(out.lines[slow]) <= 12
    assert all(19 <= len(out.lines[s]) <= 22 for s in crowd)
    note = out.lines[slow][0]
    assert note["method"] == "gpu.power"
    assert note["params"]["subscription"] == slow
    assert note["params"]["power_mw"] == {"0": 100}
    assert isinstance(note["params"]["timestamp_ms"], int)


async def test_fastest_subscriber_sets_the_rate_until_it_leaves(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """The poll follows the fastest subscriber and stops when the last one leaves."""
    source = FakeSource()
    hub = await run_hub(nursery, source)
    out = Recorder()
    slow = hub.subscribe([0, 1], 200, out)
    fast = hub.subscribe([1], 10, out)
    await trio.sleep(1.0)
    assert 4 <= source.reads[0] <= 7
    assert 95 <= source.reads[1] <= 105
    hub.unsubscribe(fast)
    before = dict(source.reads)
    await trio.sleep(1.0)
    assert 4 <= source.reads[1] - before[1] <= 7
    # A subscriber of several devices gets them together.
    assert out.lines[slow][-1]["params"]["power_mw"] == {"0": 100, "1": 101}
    hub.unsubscribe(slow)
    after = dict(source.reads)
    await trio.sleep(10)
    assert source.reads == after
    assert hub.subscriber_count == 0


async def test_failing_device_sends_nothing_and_logs_once_per_run(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed samples are skipped, and each run of failures is one warning."""

    def flaky(device: int, n: int) -> Any:
        failing = device == 1 and (n <= 10 or 20 < n <= 30)
        return RuntimeError("GPU is lost") if failing else 7

    source = FakeSource(flaky)
    hub = await run_hub(nursery, source)
    out = Recorder()
    sub = hub.subscribe([0, 1], 50, out)
    with caplog.at_level(logging.INFO, logger="zeusd.stream.hub"):
        await trio.sleep(2.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "work again" in r.getMessage()]
    assert len(warnings) == 2
    assert "GPU 1" in warnings[0].getMessage()
    assert "GPU is lost" in warnings[0].getMessage()
    assert len(recoveries) == 2
    with_gpu1 = [n for n in out.lines[sub] if "1" in n["params"]["power_mw"]]
    without = [n for n in out.lines[sub] if "1" not in n["params"]["power_mw"]]
    assert len(without) >= 19  # reads 1-10 and 21-30 of GPU 1 sent nothing for it
    assert with_gpu1


async def test_hung_device_does_not_stall_the_others(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """A read that never returns is not repeated, and other devices keep streaming."""
    source = FakeSource(lambda d, n: "hang" if d == 0 else 5)
    hub = await run_hub(nursery, source)
    out = Recorder()
    both = hub.subscribe([0, 1], 50, out)
    await trio.sleep(1.0)
    assert source.reads[0] == 1
    assert 18 <= len(out.lines[both]) <= 22
    assert all(n["params"]["power_mw"] == {"1": 5} for n in out.lines[both])
    # When it finally answers, its sample is used and polling of it resumes.
    source.held[0].finish(outcome.Value(9))
    await trio.sleep(0.2)
    assert any(n["params"]["power_mw"].get("0") == 9 for n in out.lines[both])
    assert source.reads[0] > 1


async def test_no_line_after_unsubscribe(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Once unsubscribed, nothing more is put for that subscription."""
    source = FakeSource()
    hub = await run_hub(nursery, source)
    out = Recorder()
    sub = hub.subscribe([0], 10, out)
    await trio.sleep(0.5)
    hub.unsubscribe(sub)
    count = len(out.lines[sub])
    await trio.sleep(0.5)
    assert len(out.lines[sub]) == count > 0


async def test_shared_budget_caps_subscriptions_over_hubs(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """Two hubs sharing a budget of 3 refuse the 4th subscription until one ends."""
    budget = SubscriptionBudget(3)
    gpus = PowerHub("gpu", FakeSource(), range(2), budget)
    cpus = PowerHub("cpu", FakeSource(), range(1), budget)
    await nursery.start(gpus.run)
    await nursery.start(cpus.run)
    out = Recorder()
    first = gpus.subscribe([0], 50, out)
    gpus.subscribe([1], 50, out)
    cpus.subscribe([0], 50, out)
    with pytest.raises(SubscriptionLimitError, match="3 subscriptions"):
        cpus.subscribe([0], 50, out)
    assert gpus.subscriber_count + cpus.subscriber_count == 3
    gpus.unsubscribe(first)
    gpus.unsubscribe(first)  # twice gives nothing back twice
    assert budget.used == 2
    cpus.subscribe([0], 50, out)
    with pytest.raises(SubscriptionLimitError):
        gpus.subscribe([0], 50, out)


async def test_churn_leaves_no_garbage(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Thousands of subscribe/unsubscribe cycles at many intervals leave the hub's own
    bookkeeping the size of what is subscribed, and the poll at the remaining rate."""
    source = FakeSource()
    hub = await run_hub(nursery, source)
    out = Recorder()
    keep = hub.subscribe([0], 20, out)
    for n in range(3000):
        sub = hub.subscribe([0, 1], 1000 + n, out)
        if n % 7 == 0:
            await trio.sleep(0.05)  # let some be delivered and requeued first
        hub.unsubscribe(sub)
    assert hub.subscriber_count == 1
    assert len(hub._due) <= 2 * 1 + 16 + 1
    device = hub._devices[0]
    assert len(device.intervals) <= 2 * len(device.counts) + 8 + 1
    assert hub._devices[1].interval is None
    before = dict(source.reads)
    await trio.sleep(1.0)
    assert 45 <= source.reads[0] - before[0] <= 55
    assert source.reads.get(1, 0) == before.get(1, 0)
    assert out.lines[keep]


async def test_subscriber_waiting_for_a_slow_device_gets_its_next_sample(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """Due with nothing new, a subscriber gets the device's next sample as soon as it lands."""
    source = FakeSource(lambda d, n: "hang")
    hub = await run_hub(nursery, source, devices=1)
    out = Recorder()
    sub = hub.subscribe([0], 10, out)
    await trio.sleep(1.0)
    assert sub not in out.lines
    source.held[0].finish(outcome.Value(42))
    await trio.sleep(0.011)
    assert out.lines[sub][0]["params"]["power_mw"] == {"0": 42}


class Samples:
    """An outbox that keeps the samples themselves, to see what subscribers share."""

    def __init__(self) -> None:
        self.samples: dict[str, list[PowerSample]] = {}

    def register(self, key: str) -> None:
        pass

    def put(self, key: str, sample: PowerSample) -> None:
        self.samples.setdefault(key, []).append(sample)

    def drop(self, key: str) -> None:
        pass


async def test_one_round_makes_the_values_of_the_same_devices_once(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    """Subscribers of the same devices get one values object a round; others their own."""
    hub = await run_hub(nursery, FakeSource())
    out = Samples()
    both = [hub.subscribe([0, 1], 50, out) for _ in range(3)]
    alone = hub.subscribe([1], 50, out)
    await trio.sleep(0.2)
    firsts = [out.samples[s][0] for s in both]
    assert all(s.power_mw is firsts[0].power_mw for s in firsts)
    assert firsts[0].power_mw == {"0": 100, "1": 101}
    assert out.samples[alone][0].power_mw == {"1": 101}
    # Each round makes new values: a later line never reuses an earlier round's object.
    assert out.samples[both[0]][1].power_mw is not firsts[0].power_mw
    # Lines rendered from shared values are each the subscription's own.
    lines = [json.loads(notification_line(s)) for s in firsts]
    assert [line["params"]["subscription"] for line in lines] == both
    assert all(line["params"]["power_mw"] == {"0": 100, "1": 101} for line in lines)
