"""The metric families of one scrape, for prometheus_client to write out.

:class:`ZeusdCollector` is a custom collector: at each scrape it turns the GPU readings, the
RAPL counters and the :class:`~zeusd.metrics.tally.Tally` into metric families, in base
units (W, J, s; the devices speak mW, mJ and µJ). prometheus_client writes the exposition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from zeusd.cpu.rapl import EnergyCounter, RaplCpu, RaplError
from zeusd.failure_runs import FailureRun
from zeusd.gpu.backend import GpuInfo
from zeusd.metrics.gauges import GpuGauges
from zeusd.metrics.tally import Tally
from zeusd.stream.sources import ENERGY_MJ, POWER_LIMIT_MW, POWER_MW

log = logging.getLogger(__name__)

GPU_LABELS = ("gpu", "uuid", "name")


class ZeusdCollector(Collector):
    """Everything ``GET /metrics`` shows; reads no GPU (the gauges hold their readings)."""

    def __init__(
        self,
        gpus: Sequence[GpuInfo],
        gauges: GpuGauges,
        tally: Tally,
        cpus: Sequence[RaplCpu] = (),
    ) -> None:
        self._gpus = {info.index: info for info in gpus}
        self._gauges = gauges
        self._tally = tally
        self._cpus = tuple(cpus)
        self._cpu_failures: dict[str, FailureRun] = {}

    def describe(self) -> list[Metric]:
        # Nothing to check against other collectors: this is the registry's only one.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._gpu_families()
        if self._cpus:
            yield self._cpu_energy()
        yield from self._tally_families()

    def _gpu_families(self) -> Iterator[Metric]:
        power = GaugeMetricFamily(
            "zeusd_gpu_power_watts", "GPU power draw.", labels=GPU_LABELS, unit="watts"
        )
        energy = CounterMetricFamily(
            "zeusd_gpu_energy_joules",
            "GPU energy counter (since the driver loaded).",
            labels=GPU_LABELS,
            unit="joules",
        )
        limit = GaugeMetricFamily(
            "zeusd_gpu_power_limit_watts",
            "GPU power limit in force.",
            labels=GPU_LABELS,
            unit="watts",
        )
        default = GaugeMetricFamily(
            "zeusd_gpu_power_limit_default_watts",
            "GPU default power limit.",
            labels=GPU_LABELS,
            unit="watts",
        )
        for gpu, readings in sorted(self._gauges.fresh().items()):
            info = self._gpus[gpu]
            labels = (str(gpu), info.uuid, info.name)
            if POWER_MW in readings:
                power.add_metric(labels, readings[POWER_MW] / 1e3)
            if ENERGY_MJ in readings:
                energy.add_metric(labels, readings[ENERGY_MJ] / 1e3)
            if POWER_LIMIT_MW in readings:
                limit.add_metric(labels, readings[POWER_LIMIT_MW] / 1e3)
            if info.default_power_limit_mw is not None:
                default.add_metric(labels, info.default_power_limit_mw / 1e3)
        yield from (power, energy, limit, default)

    def _cpu_energy(self) -> Metric:
        energy = CounterMetricFamily(
            "zeusd_cpu_energy_joules",
            "CPU (RAPL) energy since the daemon's first reading of the counter.",
            labels=("cpu", "domain"),
            unit="joules",
        )
        for cpu in self._cpus:
            for domain, counter in (("package", cpu.package), ("dram", cpu.dram)):
                if counter is not None:
                    microjoules = self._read(counter)
                    if microjoules is not None:
                        energy.add_metric((str(cpu.id), domain), microjoules / 1e6)
        return energy

    def _read(self, counter: EnergyCounter) -> int | None:
        """A RAPL counter (a sysfs read: microseconds); None, logged once a run, if it fails."""
        run = self._cpu_failures.get(counter.path)
        if run is None:
            run = self._cpu_failures[counter.path] = FailureRun(log, f"reading {counter.path}")
        try:
            value = counter.read()
        except RaplError as exc:
            run.failed(str(exc))
            return None
        run.succeeded()
        return value

    def _tally_families(self) -> Iterator[Metric]:
        tally = self._tally
        requests = CounterMetricFamily(
            "zeusd_requests",
            "Method calls (JSON-RPC and HTTP), by method and outcome (0, or the JSON-RPC "
            "error code).",
            labels=("method", "code"),
        )
        durations = HistogramMetricFamily(
            "zeusd_request_duration_seconds",
            "Time from a call's access check to its result.",
            labels=("method",),
            unit="seconds",
        )
        for method, counts in sorted(tally.methods.items()):
            for code, count in sorted(counts.codes.items()):
                requests.add_metric((method, str(code)), count)
            durations.add_metric((method,), counts.cumulative(), counts.sum)
        connections = GaugeMetricFamily(
            "zeusd_connections", "Open client connections, by dialect.", labels=("dialect",)
        )
        for dialect, count in sorted(tally.connections.items()):
            connections.add_metric((dialect,), count)
        writes = CounterMetricFamily(
            "zeusd_gpu_writes",
            "gpu-control methods applied, by GPU and method.",
            labels=("gpu", "method"),
        )
        for (gpu, method), count in sorted(tally.writes.items()):
            writes.add_metric((str(gpu), method), count)
        restores = CounterMetricFamily(
            "zeusd_restores", "GPU settings put back (restore on close, on exit, at start)."
        )
        restores.add_metric((), tally.restores)
        yield from (requests, durations, connections, writes, restores)
