"""Metrics units: the collector's exposition parsed back, staleness and polling on a virtual
clock, the tally's counts."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import outcome
import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from fake_rapl import make_tree
from zeusd.cpu.rapl import open_rapl
from zeusd.gpu.backend import GpuInfo, NvmlBackend
from zeusd.gpu.lanes import Job
from zeusd.metrics.collector import ZeusdCollector
from zeusd.metrics.exporter import Exporter
from zeusd.metrics.gauges import FIRST_READINGS_S, IDLE_S, STALE_S, GpuGauges
from zeusd.metrics.tally import BUCKETS_S, Tally
from zeusd.sim import SimNvml, default_sim_gpus
from zeusd.stream.hub import PowerHub
from zeusd.stream.outbox import PowerSample

GPU_SERIES = (
    "zeusd_gpu_power_watts",
    "zeusd_gpu_energy_joules_total",
    "zeusd_gpu_power_limit_watts",
    "zeusd_gpu_power_limit_default_watts",
)


def infos(count: int = 2) -> list[GpuInfo]:
    return list(NvmlBackend.open(SimNvml(default_sim_gpus(count)), name="sim").infos)


class FakeSource:
    """Readings per GPU from *behaviour*; "hang" gives a read that never finishes."""

    kind = "GPU (metrics)"

    def __init__(self, behaviour: Callable[[int], Any]) -> None:
        self.behaviour = behaviour
        self.reads: dict[int, int] = {}

    def start(self, device: int) -> None:
        pass

    def submit(self, device: int) -> Job:
        self.reads[device] = self.reads.get(device, 0) + 1
        job = Job(device, lambda: None)
        value = self.behaviour(device)
        if value != "hang":
            job.finish(outcome.Value(value))
        return job


def readings(power_mw: int = 250_500) -> dict[str, int | None]:
    return {"power_mw": power_mw, "energy_mj": 1_234_567, "power_limit_mw": 300_000}


def gauges_for(
    count: int = 2, behaviour: Callable[[int], Any] = lambda gpu: readings()
) -> tuple[GpuGauges, PowerHub, FakeSource]:
    source = FakeSource(behaviour)
    hub = PowerHub("gpu-metrics", source, range(count))
    return GpuGauges(hub, range(count)), hub, source


def exposition(collector: ZeusdCollector) -> dict[str, list[Any]]:
    """What prometheus_client writes of *collector*, parsed back: samples by name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return parse(generate_latest(registry))


def parse(text: bytes) -> dict[str, list[Any]]:
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def put(gauges: GpuGauges, values: dict[str, dict[str, int | None]]) -> None:
    gauges.put("gpu-metrics-1", PowerSample("gpu-metrics", "gpu-metrics-1", 0, values))


def by_gpu(samples: dict[str, list[Any]], name: str) -> dict[str, float]:
    return {s.labels["gpu"]: s.value for s in samples.get(name, [])}


# --- GPU readings -----------------------------------------------------------------------------


async def test_gpu_readings_are_in_base_units_with_their_labels() -> None:
    """mW, mJ and the default limit come out as W and J, labelled gpu, uuid and name."""
    gpus = infos(2)
    gauges, _, _ = gauges_for()
    put(gauges, {"0": readings(250_500), "1": readings(99_000)})
    samples = exposition(ZeusdCollector(gpus, gauges, Tally()))
    assert by_gpu(samples, "zeusd_gpu_power_watts") == {"0": 250.5, "1": 99.0}
    assert by_gpu(samples, "zeusd_gpu_energy_joules_total") == {"0": 1234.567, "1": 1234.567}
    assert by_gpu(samples, "zeusd_gpu_power_limit_watts") == {"0": 300.0, "1": 300.0}
    assert by_gpu(samples, "zeusd_gpu_power_limit_default_watts") == {"0": 700.0, "1": 700.0}
    for sample in samples["zeusd_gpu_power_watts"]:
        info = gpus[int(sample.labels["gpu"])]
        assert sample.labels == {"gpu": str(info.index), "uuid": info.uuid, "name": info.name}


async def test_a_failed_reading_is_left_out_and_the_rest_stay() -> None:
    """A GPU whose energy call failed (None) shows its power and limits, no energy."""
    gauges, _, _ = gauges_for()
    put(gauges, {"0": {"power_mw": 100_000, "energy_mj": None, "power_limit_mw": 200_000}})
    samples = exposition(ZeusdCollector(infos(2), gauges, Tally()))
    assert by_gpu(samples, "zeusd_gpu_power_watts") == {"0": 100.0}
    assert "zeusd_gpu_energy_joules_total" not in samples
    assert by_gpu(samples, "zeusd_gpu_power_limit_watts") == {"0": 200.0}


async def test_a_stuck_gpu_keeps_its_values_for_10_s_then_is_left_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    """GPU 0 stops delivering: its series stay up to STALE_S, then all four go; GPU 1 stays."""
    gauges, _, _ = gauges_for()
    collector = ZeusdCollector(infos(2), gauges, Tally())
    put(gauges, {"0": readings(111_000), "1": readings()})
    await trio.sleep(STALE_S - 0.5)
    put(gauges, {"1": readings(222_000)})
    samples = exposition(collector)
    for name in GPU_SERIES:
        assert set(by_gpu(samples, name)) == {"0", "1"}, name
    assert by_gpu(samples, "zeusd_gpu_power_watts")["0"] == 111.0
    await trio.sleep(1.0)
    samples = exposition(collector)
    for name in GPU_SERIES:
        assert set(by_gpu(samples, name)) == {"1"}, name
    assert by_gpu(samples, "zeusd_gpu_power_watts") == {"1": 222.0}


# --- polling while scrapes come -------------------------------------------------------------


async def running_exporter(
    nursery: trio.Nursery, behaviour: Callable[[int], Any] = lambda gpu: readings()
) -> tuple[Exporter, GpuGauges, PowerHub, FakeSource]:
    """Two GPUs behind a running metrics hub, its gauges and an exporter."""
    gauges, hub, source = gauges_for(2, behaviour)
    exporter = Exporter(ZeusdCollector(infos(2), gauges, Tally()), gauges)
    await nursery.start(hub.run)
    await nursery.start(gauges.run)
    return exporter, gauges, hub, source


async def test_polling_starts_with_the_first_scrape_and_stops_when_idle(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """No reads before a scrape; about one a second per GPU while scraped; none after IDLE_S."""
    exporter, gauges, hub, source = await running_exporter(nursery)
    await trio.sleep(60)
    assert source.reads == {}
    first = parse(await exporter.scrape())
    assert by_gpu(first, "zeusd_gpu_power_watts") == {"0": 250.5, "1": 250.5}
    assert hub.subscriber_count == 1
    await trio.sleep(10.5)
    assert all(10 <= n <= 12 for n in source.reads.values()), source.reads
    await trio.sleep(IDLE_S)
    assert hub.subscriber_count == 0
    assert not gauges.polling
    seen = dict(source.reads)
    await trio.sleep(60)
    assert source.reads == seen
    # Scraped again: polling again, with fresh readings only.
    again = parse(await exporter.scrape())
    assert set(by_gpu(again, "zeusd_gpu_power_watts")) == {"0", "1"}
    assert hub.subscriber_count == 1


async def test_scrapes_keep_the_poller_running(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """A scrape every minute, for longer than IDLE_S: the one subscription stays."""
    exporter, _, hub, _ = await running_exporter(nursery)
    for _ in range(int(2 * IDLE_S / 60)):
        await exporter.scrape()
        assert hub.subscriber_count == 1
        await trio.sleep(60)


async def test_a_hung_gpu_never_holds_up_a_scrape(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """GPU 1's read never finishes: the first scrape answers within FIRST_READINGS_S with
    GPU 0 only, later ones at once, and GPU 1's one read is never started again."""
    exporter, _, _, source = await running_exporter(
        nursery, lambda gpu: "hang" if gpu == 1 else readings()
    )
    began = trio.current_time()
    first = parse(await exporter.scrape())
    assert trio.current_time() - began <= FIRST_READINGS_S
    assert by_gpu(first, "zeusd_gpu_power_watts") == {"0": 250.5}
    await trio.sleep(30)
    began = trio.current_time()
    later = parse(await exporter.scrape())
    assert trio.current_time() == began
    assert by_gpu(later, "zeusd_gpu_power_watts") == {"0": 250.5}
    assert source.reads[1] == 1
    assert source.reads[0] >= 29


# --- CPUs -----------------------------------------------------------------------------------


async def test_cpu_energy_is_in_joules_per_domain(tmp_path: Any) -> None:
    """Package and DRAM counters (µJ) are joules, labelled cpu and domain."""
    root = make_tree(str(tmp_path / "powercap"), [True, False], energy_uj=2_500_000)
    cpus = open_rapl(root)
    gauges, _, _ = gauges_for()
    samples = exposition(ZeusdCollector(infos(2), gauges, Tally(), cpus))
    got = {
        (s.labels["cpu"], s.labels["domain"]): s.value
        for s in samples["zeusd_cpu_energy_joules_total"]
    }
    assert got == {("0", "package"): 2.5, ("0", "dram"): 2.5, ("1", "package"): 2.5}


async def test_an_unreadable_cpu_counter_is_left_out(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A counter that cannot be read drops its series (logged), the others stay."""
    root = make_tree(str(tmp_path / "powercap"), [False, False])
    cpus = open_rapl(root)
    os.remove(os.path.join(root, "intel-rapl:1", "energy_uj"))
    gauges, _, _ = gauges_for()
    samples = exposition(ZeusdCollector(infos(2), gauges, Tally(), cpus))
    assert [s.labels["cpu"] for s in samples["zeusd_cpu_energy_joules_total"]] == ["0"]
    assert "intel-rapl:1" in caplog.text


async def test_no_cpu_series_without_cpus() -> None:
    """Without RAPL CPUs (or cpu-read off) there is no CPU family at all."""
    gauges, _, _ = gauges_for()
    samples = exposition(ZeusdCollector(infos(2), gauges, Tally()))
    assert not any(name.startswith("zeusd_cpu_") for name in samples)


# --- the tally ------------------------------------------------------------------------------


async def test_calls_are_counted_by_method_and_code_with_durations() -> None:
    """requests_total per (method, code); the histogram's buckets are cumulative, in s."""
    tally = Tally()
    tally.call_finished("gpu.get_power", 0, 0.0003)
    tally.call_finished("gpu.get_power", 0, BUCKETS_S[1])  # on a bound: in that bucket
    tally.call_finished("gpu.set_power_limit", -32602, 0.02)
    tally.call_finished("gpu.set_power_limit", 0, 30.0)
    samples = exposition(ZeusdCollector(infos(2), gauges_for()[0], tally))
    requests = {
        (s.labels["method"], s.labels["code"]): s.value for s in samples["zeusd_requests_total"]
    }
    assert requests == {
        ("gpu.get_power", "0"): 2,
        ("gpu.set_power_limit", "-32602"): 1,
        ("gpu.set_power_limit", "0"): 1,
    }
    buckets = {
        (s.labels["method"], s.labels["le"]): s.value
        for s in samples["zeusd_request_duration_seconds_bucket"]
    }
    assert buckets["gpu.get_power", "0.0005"] == 1
    assert buckets["gpu.get_power", "0.001"] == 2
    assert buckets["gpu.get_power", "+Inf"] == 2
    assert buckets["gpu.set_power_limit", "0.01"] == 0
    assert buckets["gpu.set_power_limit", "0.025"] == 1
    assert buckets["gpu.set_power_limit", "10.0"] == 1
    assert buckets["gpu.set_power_limit", "+Inf"] == 2
    sums = {s.labels["method"]: s.value for s in samples["zeusd_request_duration_seconds_sum"]}
    assert sums["gpu.set_power_limit"] == pytest.approx(30.02)


async def test_connections_writes_and_restores() -> None:
    """Open connections per dialect; writes per (gpu, method); restores from many threads."""
    tally = Tally(restores=2)
    tally.connection_opened("jsonrpc")
    tally.connection_opened("http")
    tally.connection_opened("http")
    tally.connection_closed("http")
    tally.gpu_written(0, "gpu.set_power_limit")
    tally.gpu_written(0, "gpu.set_power_limit")
    tally.gpu_written(3, "gpu.reset_locked_clocks")
    threads = [
        threading.Thread(target=lambda: [tally.restored() for _ in range(500)]) for _ in "ab"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = exposition(ZeusdCollector(infos(2), gauges_for()[0], tally))
    assert {s.labels["dialect"]: s.value for s in samples["zeusd_connections"]} == {
        "jsonrpc": 1,
        "http": 1,
    }
    writes = {
        (s.labels["gpu"], s.labels["method"]): s.value for s in samples["zeusd_gpu_writes_total"]
    }
    assert writes == {("0", "gpu.set_power_limit"): 2, ("3", "gpu.reset_locked_clocks"): 1}
    assert [s.value for s in samples["zeusd_restores_total"]] == [1002]
