"""What the power hubs read: GPUs through their lanes, CPUs from RAPL counters."""

from __future__ import annotations

import time
from collections.abc import Sequence

import outcome

from zeusd.cpu.rapl import RaplCpu, power_mw
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
