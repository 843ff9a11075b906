"""What the power hubs read: GPUs through their lanes, CPUs from RAPL counters."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import outcome

from zeusd.cpu.rapl import RaplCpu, power_mw
from zeusd.gpu.backend import GpuInfo, NvmlCallError
from zeusd.gpu.device import GpuDevice
from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError, LaneFullError


def _finished(result: outcome.Outcome[object]) -> Job:
    job = Job(-1, lambda: None)
    job.finish(result)
    return job


class GpuPowerSource:
    """Reads go through each GPU's lane, so they stay ordered with that GPU's writes."""

    kind = "GPU"

    def __init__(self, devices: Sequence[GpuDevice], lanes: GpuLanes) -> None:
        self._devices = devices
        self._lanes = lanes

    def start(self, device: int) -> None:
        pass

    def submit(self, device: int) -> Job:
        try:
            # The hub stops waiting after half an interval; the lane runs the read anyway.
            return self._lanes.submit([(device, self._devices[device].get_power)])[0]
        except (LaneClosedError, LaneFullError) as exc:
            return _finished(outcome.Error(exc))


#: The names of the values a :class:`GpuReadingsSource` sample holds (NVML units).
POWER_MW = "power_mw"
ENERGY_MJ = "energy_mj"
POWER_LIMIT_MW = "power_limit_mw"


class GpuReadingsSource:
    """Power, energy counter and power limit of a GPU, read in one job on its lane (one
    worker-thread hop for the three calls), for the metrics.

    A sample maps each name to its value, or to None where that call failed; a GPU with no
    energy counter is not asked for one. A read fails whole only when every call failed.
    """

    kind = "GPU (metrics)"

    def __init__(
        self, devices: Sequence[GpuDevice], infos: Sequence[GpuInfo], lanes: GpuLanes
    ) -> None:
        self._reads = [_readers(device, info) for device, info in zip(devices, infos, strict=True)]
        self._lanes = lanes

    def start(self, device: int) -> None:
        pass

    def submit(self, device: int) -> Job:
        try:
            read = functools.partial(_read_all, self._reads[device])
            return self._lanes.submit([(device, read)])[0]
        except (LaneClosedError, LaneFullError) as exc:
            return _finished(outcome.Error(exc))


Readers = tuple[tuple[str, Callable[[], int]], ...]


def _readers(device: GpuDevice, info: GpuInfo) -> Readers:
    reads = [(POWER_MW, device.get_power), (POWER_LIMIT_MW, device.get_power_limit)]
    if info.cumulative_energy_available:
        reads.append((ENERGY_MJ, device.get_cumulative_energy))
    return tuple(reads)


def _read_all(reads: Readers) -> dict[str, int | None]:
    """In the lane's worker thread: each value, None where its call failed."""
    values: dict[str, int | None] = {}
    failure: NvmlCallError | None = None
    for name, read in reads:
        try:
            values[name] = read()
        except NvmlCallError as exc:
            values[name], failure = None, exc
    if failure is not None and all(v is None for v in values.values()):
        raise failure
    return values


class CpuPowerSource:
    """Power between this reading and the previous one of the same CPU (RAPL energy)."""

    kind = "CPU"

    def __init__(self, cpus: Sequence[RaplCpu]) -> None:
        self._cpus = {cpu.id: cpu for cpu in cpus}
        self._last: dict[int, tuple[float, int, int | None]] = {}

    def start(self, device: int) -> None:
        # An old reading would average over the whole pause.
        self._last.pop(device, None)

    def submit(self, device: int) -> Job:
        return _finished(outcome.capture(self._sample, device))

    def _sample(self, device: int) -> dict[str, int | None] | None:
        cpu = self._cpus[device]
        now = time.monotonic()
        package = cpu.package.read()
        dram = None if cpu.dram is None else cpu.dram.read()
        previous = self._last.get(device)
        self._last[device] = (now, package, dram)
        if previous is None:
            return None
        then, package_before, dram_before = previous
        seconds = now - then
        return {
            "cpu_mw": power_mw(package - package_before, seconds),
            "dram_mw": None
            if dram is None or dram_before is None
            else power_mw(dram - dram_before, seconds),
        }
