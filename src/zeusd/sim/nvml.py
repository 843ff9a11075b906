"""A simulated NVML with the call surface of the ``pynvml`` module (tests, ``--gpu-backend sim``).

Only the functions zeusd uses exist. Each takes the same positional arguments as its pynvml
namesake, returns the same types and fails with the real ``pynvml.NVMLError`` subclasses.
"""

from __future__ import annotations

import ctypes
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import pynvml

from zeusd.gpu.nvml_errors import ERROR_CODES
from zeusd.sim.armed import ArmedCalls
from zeusd.sim.config import FAULT_FUNCTIONS, SimGpuSpec
from zeusd.sim.power import mean_power_mw
from zeusd.sim.state import SimStateFile

# H100 SXM5 80GB: device 0x2330 from vendor 0x10DE, as NVML packs them.
_PCI_DEVICE_ID = 0x233010DE
_PCI_SUBSYSTEM_ID = 0x16C110DE


def _fail(code: int) -> NoReturn:
    # NVMLError.__new__ picks the subclass for the code, e.g. NVMLError_NoPermission.
    raise pynvml.NVMLError(code)


def _uint(value: int) -> int:
    # pynvml passes integers as c_uint: out-of-range values wrap silently instead of failing.
    return ctypes.c_uint(value).value


def _snap(value: int, supported: Sequence[int]) -> int:
    # Nearest supported clock (ties go down); values outside the range end at its edge.
    return min(supported, key=lambda clock: (abs(clock - value), clock))


def _locked_pair(low: int, high: int, supported: Sequence[int]) -> tuple[int, int]:
    # What the driver does with a lock request: wrap like c_uint, refuse min > max, and
    # otherwise snap both ends onto the supported clocks.
    low, high = _uint(low), _uint(high)
    if low > high:
        _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return _snap(low, supported), _snap(high, supported)


class SimDevice(ArmedCalls):
    """State of one simulated GPU; doubles as its NVML handle.

    Tests may read every public attribute and change ``latency_s``, ``hold`` and ``faults``.
    """

    def __init__(self, index: int, spec: SimGpuSpec, now: float) -> None:
        for key, error in spec.faults.items():
            if key not in FAULT_FUNCTIONS or error not in ERROR_CODES:
                raise ValueError(f"simulated GPU {index}: unknown fault {key!r} = {error!r}")
        if not spec.memory_clocks_mhz or not spec.graphics_clocks_mhz:
            raise ValueError(f"simulated GPU {index}: needs at least one clock of each kind")
        self.index = index
        self.spec = spec
        # Derived from the index so a client sees the same UUID across daemon restarts.
        self.uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'zeusd-sim:gpu:{index}')}"
        # Bus numbers start at 0x18 like a typical SXM board; overflow goes to the domain.
        self.pci_domain, self.pci_bus = divmod(0x18 + index, 0x100)
        self.pci_bus_id = f"{self.pci_domain:08X}:{self.pci_bus:02X}:00.0"
        self.lock = threading.Lock()
        self.power_limit_mw = spec.default_power_limit_mw
        self.persistence_mode = 0
        self.gpu_locked_clocks: tuple[int, int] | None = None
        self.mem_locked_clocks: tuple[int, int] | None = None
        super().__init__(spec, FAULT_FUNCTIONS)
        # A real counter counts since driver load, so it never starts at zero.
        self._energy_mj = float(10**9 * (index + 1))
        self._energy_t = now

    def power_mw(self, t0: float, t1: float) -> float:
        """Mean draw over [t0, t1] under the current limit (see :mod:`zeusd.sim.power`)."""
        return mean_power_mw(self.index, self.power_limit_mw, t0, t1)

    def energy_mj(self, now: float) -> int:
        """Integrate the draw up to *now* and return the counter; call with ``lock`` held."""
        if now > self._energy_t:
            self._energy_mj += self.power_mw(self._energy_t, now) * (now - self._energy_t)
            self._energy_t = now
        return int(self._energy_mj)


class SimNvml:
    """Drop-in for the ``pynvml`` module over simulated GPUs.

    Latency, ``hold`` and faults apply only after :meth:`arm`, so start-up always succeeds;
    they apply to calls that take a handle, not to init, count or handle lookup.
    """

    NVMLError = pynvml.NVMLError
    # Spelled out (the loop at the bottom copies the rest) so type checkers see them.
    NVML_FEATURE_DISABLED: int = pynvml.NVML_FEATURE_DISABLED
    NVML_FEATURE_ENABLED: int = pynvml.NVML_FEATURE_ENABLED

    def __init__(
        self,
        gpus: Sequence[SimGpuSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        state_file: str | None = None,
    ) -> None:
        self._clock = clock
        now = clock()
        self.devices: list[SimDevice] = [SimDevice(i, spec, now) for i, spec in enumerate(gpus)]
        self._lock = threading.Lock()
        self._init_count = 0
        self._armed = False
        #: --sim-state: the settings live in this file too, so they outlive the process.
        self._state = SimStateFile(state_file) if state_file is not None else None
        if self._state is not None:
            self._state.load(self.devices)
            self._state.save(self.devices)

    def _changed(self) -> None:
        if self._state is not None:
            self._state.save(self.devices)

    def arm(self) -> None:
        """From now on latency, ``hold`` and faults apply."""
        self._armed = True

    def _check_init(self) -> None:
        with self._lock:
            if self._init_count == 0:
                _fail(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: object, function: str) -> SimDevice:
        self._check_init()
        if not isinstance(handle, SimDevice) or handle not in self.devices:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self._armed:
            error = handle.armed_call(function)
            if error is not None:
                _fail(ERROR_CODES[error])
        return handle

    def nvmlInit(self) -> None:
        with self._lock:
            self._init_count += 1

    def nvmlShutdown(self) -> None:
        with self._lock:
            if self._init_count == 0:
                _fail(pynvml.NVML_ERROR_UNINITIALIZED)
            self._init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimDevice:
        index = _uint(index)
        self._check_init()
        if index >= len(self.devices):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self._device(handle, "nvmlDeviceGetName").spec.name

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetPciInfo(self, handle: object) -> Any:
        dev = self._device(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.busId = dev.pci_bus_id.encode()
        # The legacy field is 16 bytes, so NVML writes a 4-digit domain there.
        info.busIdLegacy = f"{dev.pci_domain:04X}:{dev.pci_bus:02X}:00.0".encode()
        info.domain = dev.pci_domain
        info.bus = dev.pci_bus
        info.device = 0
        info.pciDeviceId = _PCI_DEVICE_ID
        info.pciSubSystemId = _PCI_SUBSYSTEM_ID
        return info

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        dev = self._device(handle, "nvmlDeviceGetPowerManagementLimit")
        with dev.lock:
            return dev.power_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        spec = self._device(handle, "nvmlDeviceGetPowerManagementLimitConstraints").spec
        return [spec.min_power_limit_mw, spec.max_power_limit_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        dev = self._device(handle, "nvmlDeviceGetPowerManagementDefaultLimit")
        return dev.spec.default_power_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None:
        limit = _uint(limit)
        dev = self._device(handle, "nvmlDeviceSetPowerManagementLimit")
        if not dev.spec.min_power_limit_mw <= limit <= dev.spec.max_power_limit_mw:
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with dev.lock:
            # Energy so far was drawn under the old limit.
            dev.energy_mj(self._clock())
            dev.power_limit_mw = limit
        self._changed()

    def nvmlDeviceGetPersistenceMode(self, handle: object) -> int:
        dev = self._device(handle, "nvmlDeviceGetPersistenceMode")
        with dev.lock:
            return dev.persistence_mode

    def nvmlDeviceSetPersistenceMode(self, handle: object, mode: int) -> None:
        mode = _uint(mode)
        dev = self._device(handle, "nvmlDeviceSetPersistenceMode")
        if mode not in (pynvml.NVML_FEATURE_DISABLED, pynvml.NVML_FEATURE_ENABLED):
            _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with dev.lock:
            dev.persistence_mode = mode
        self._changed()

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        dev = self._device(handle, "nvmlDeviceGetPowerUsage")
        with dev.lock:
            now = self._clock()
            return round(dev.power_mw(now, now))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        dev = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if not dev.spec.energy_counter:
            _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with dev.lock:
            return dev.energy_mj(self._clock())

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: object) -> list[int]:
        spec = self._device(handle, "nvmlDeviceGetSupportedMemoryClocks").spec
        return list(spec.memory_clocks_mhz)  # a fresh list: callers may mutate it

    def nvmlDeviceGetSupportedGraphicsClocks(
        self, handle: object, memoryClockMHz: int
    ) -> list[int]:
        memory_clock = _uint(memoryClockMHz)
        spec = self._device(handle, "nvmlDeviceGetSupportedGraphicsClocks").spec
        if memory_clock not in spec.memory_clocks_mhz:
            _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return list(spec.graphics_clocks_mhz)

    def nvmlDeviceSetGpuLockedClocks(
        self, handle: object, minGpuClockMHz: int, maxGpuClockMHz: int
    ) -> None:
        dev = self._device(handle, "nvmlDeviceSetGpuLockedClocks")
        pair = _locked_pair(minGpuClockMHz, maxGpuClockMHz, dev.spec.graphics_clocks_mhz)
        with dev.lock:
            dev.gpu_locked_clocks = pair
        self._changed()

    def nvmlDeviceResetGpuLockedClocks(self, handle: object) -> None:
        dev = self._device(handle, "nvmlDeviceResetGpuLockedClocks")
        with dev.lock:
            dev.gpu_locked_clocks = None
        self._changed()

    def nvmlDeviceSetMemoryLockedClocks(
        self, handle: object, minMemClockMHz: int, maxMemClockMHz: int
    ) -> None:
        dev = self._device(handle, "nvmlDeviceSetMemoryLockedClocks")
        pair = _locked_pair(minMemClockMHz, maxMemClockMHz, dev.spec.memory_clocks_mhz)
        with dev.lock:
            dev.mem_locked_clocks = pair
        self._changed()

    def nvmlDeviceResetMemoryLockedClocks(self, handle: object) -> None:
        dev = self._device(handle, "nvmlDeviceResetMemoryLockedClocks")
        with dev.lock:
            dev.mem_locked_clocks = None
        self._changed()


def _copy_pynvml_constants() -> None:
    # The codes callers compare against and the NVMLError_* subclasses they catch, so code
    # written against the pynvml module works unchanged on a SimNvml.
    for name, value in vars(pynvml).items():
        if name.startswith(("NVML_ERROR_", "NVML_FEATURE_", "NVMLError")) or name == "NVML_SUCCESS":
            setattr(SimNvml, name, value)


_copy_pynvml_constants()
