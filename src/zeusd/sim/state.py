"""``--sim-state FILE``: simulated GPU settings that outlive the daemon, as real ones do.

The file maps each GPU's UUID to its power limit, persistence mode and locked clocks. It is
rewritten (temporary file, rename) after every change, and read when a SimNvml starts, so a
new daemon with the same file finds the GPUs as the last one left them, crash or not.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from zeusd.sim.config import SimConfigError, SimGpuSpec

FORMAT = "zeusd-sim-state/1"


class SimDevice(Protocol):
    """What this module reads and sets of a simulated GPU (sim.nvml.SimDevice)."""

    uuid: str
    spec: SimGpuSpec
    lock: threading.Lock
    power_limit_mw: int
    persistence_mode: int
    gpu_locked_clocks: tuple[int, int] | None
    mem_locked_clocks: tuple[int, int] | None


class SimStateFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self, devices: Sequence[SimDevice]) -> None:
        """Apply the saved settings to *devices*. Raises SimConfigError for a bad file."""
        where = f"--sim-state {self.path}"
        try:
            with open(self.path, "rb") as f:
                body = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return  # first run: the GPUs start at their defaults
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SimConfigError(f"{where}: cannot read it: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise SimConfigError(f"{where}: not a {FORMAT} file")
        gpus = body.get("gpus")
        if not isinstance(gpus, dict):
            raise SimConfigError(f"{where}: 'gpus' must be an object keyed by GPU UUID")
        for device in devices:
            saved = gpus.get(device.uuid)
            if saved is not None:
                _apply(device, saved, f"{where}, GPU {device.uuid}")

    def save(self, devices: Sequence[SimDevice]) -> None:
        """Write every device's settings (called after each change, from lane threads)."""
        with self._lock:
            gpus = {}
            for device in devices:
                with device.lock:
                    gpus[device.uuid] = {
                        "power_limit_mw": device.power_limit_mw,
                        "persistence_mode": device.persistence_mode,
                        "gpu_locked_clocks": device.gpu_locked_clocks,
                        "mem_locked_clocks": device.mem_locked_clocks,
                    }
            temp = f"{self.path}.tmp.{os.getpid()}"
            with open(temp, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "gpus": gpus}, f, indent=1, sort_keys=True)
            os.replace(temp, self.path)


def _apply(device: SimDevice, saved: Any, where: str) -> None:
    keys = {"power_limit_mw", "persistence_mode", "gpu_locked_clocks", "mem_locked_clocks"}
    if not isinstance(saved, dict) or set(saved) != keys:
        raise SimConfigError(f"{where}: expected exactly the keys {', '.join(sorted(keys))}")
    spec = device.spec
    limit = saved["power_limit_mw"]
    if type(limit) is not int or not spec.min_power_limit_mw <= limit <= spec.max_power_limit_mw:
        raise SimConfigError(f"{where}: power_limit_mw {limit!r} is outside this GPU's range")
    if saved["persistence_mode"] not in (0, 1) or type(saved["persistence_mode"]) is not int:
        raise SimConfigError(f"{where}: persistence_mode must be 0 or 1")
    device.power_limit_mw = limit
    device.persistence_mode = saved["persistence_mode"]
    device.gpu_locked_clocks = _pair(saved["gpu_locked_clocks"], spec.graphics_clocks_mhz, where)
    device.mem_locked_clocks = _pair(saved["mem_locked_clocks"], spec.memory_clocks_mhz, where)


def _pair(value: Any, supported: Sequence[int], where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(v) is int and v in supported for v in value)
        or value[0] > value[1]
    ):
        raise SimConfigError(f"{where}: locked clocks {value!r} are not a supported pair")
    return value[0], value[1]
