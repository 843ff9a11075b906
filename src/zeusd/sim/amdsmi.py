"""A simulated amdsmi with the call surface of the ``amdsmi`` Python package (tests,
``--gpu-backend sim --sim-vendor amd``).

Only the functions zeusd uses exist. Each takes amdsmi's positional arguments in amdsmi's
order, checks their types as amdsmi does (``AmdSmiParameterException``), returns amdsmi's
dict shapes and units (µW power caps, W socket power, Hz clock levels, MHz clock ranges, an
energy counter in ticks of ``counter_resolution`` µJ), and fails with an
``AmdSmiLibraryException`` carrying amdsmi's status code, as amdsmi 7.0 does.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from zeusd.gpu.amdsmi_errors import STATUS, status_name
from zeusd.sim.armed import ArmedCalls
from zeusd.sim.config import AMD_FAULT_FUNCTIONS, SimGpuSpec
from zeusd.sim.power import mean_power_mw

#: What MI300X reports: one tick of the energy accumulator, in µJ (a C float).
COUNTER_RESOLUTION_UJ = ctypes.c_float(15.259).value
#: amdsmi's "no reading" for a 16-bit field.
_NA = "N/A"


class AmdSmiException(Exception):
    """Base of amdsmi's exceptions."""


class AmdSmiLibraryException(AmdSmiException):
    """A call failed with an ``AMDSMI_STATUS_*`` code, as amdsmi raises it."""

    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        description = STATUS.get(status_name(err_code), (0, "An unknown error occurred"))[1]
        self.err_info = f"{status_name(err_code)} - {description}"

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_info(self, detailed: bool = True) -> str:
        return self.err_info if detailed else self.err_info.split(" - ")[0]

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(STATUS["AMDSMI_STATUS_RETRY"][0])


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(STATUS["AMDSMI_STATUS_TIMEOUT"][0])


class AmdSmiParameterException(AmdSmiException):
    """An argument of the wrong type (amdsmi checks types before calling the C library)."""

    def __init__(self, received: object, expected: object) -> None:
        super().__init__(f"Invalid parameter: got {type(received)}, expected {expected}")
        self.err_code = None


class AmdSmiInitFlags(enum.IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_AMD_APUS = 3
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8


class AmdSmiClkType(enum.IntEnum):
    SYS = 0
    GFX = 0  # an alias of SYS, as in amdsmi
    DF = 1
    DCEF = 2
    SOC = 3
    MEM = 4
    PCIE = 5
    VCLK0 = 6
    VCLK1 = 7
    DCLK0 = 8
    DCLK1 = 9


def _fail(name: str) -> NoReturn:
    code = STATUS[name][0]
    if name == "AMDSMI_STATUS_RETRY":
        raise AmdSmiRetryException()
    if name == "AMDSMI_STATUS_TIMEOUT":
        raise AmdSmiTimeoutException()
    raise AmdSmiLibraryException(code)


def _u64(value: int) -> int:
    # amdsmi passes caps and clocks as c_uint64.
    return ctypes.c_uint64(value).value


def _int_arg(value: object) -> int:
    if not isinstance(value, int):
        raise AmdSmiParameterException(value, int)
    return value


_CLOCK_KINDS = {AmdSmiClkType.GFX: "GFX", AmdSmiClkType.MEM: "MEM"}


class SimAmdGpu(ArmedCalls):
    """State of one simulated AMD GPU; doubles as its processor handle.

    Tests may read every public attribute and change ``latency_s``, ``hold``, ``faults``
    and ``reports_current_power``.
    """

    def __init__(self, index: int, spec: SimGpuSpec, now: float) -> None:
        for key, error in spec.faults.items():
            if key not in AMD_FAULT_FUNCTIONS or error not in STATUS:
                raise ValueError(f"simulated AMD GPU {index}: unknown fault {key!r} = {error!r}")
        if not spec.memory_clocks_mhz or not spec.graphics_clocks_mhz:
            raise ValueError(f"simulated AMD GPU {index}: needs at least one clock of each kind")
        self.index = index
        self.spec = spec
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"zeusd-sim:amd-gpu:{index}"))
        # OAM boards sit on buses 0x05, 0x15, ...; overflow goes to the domain.
        self.pci_domain, self.pci_bus = divmod(0x05 + 0x10 * index, 0x100)
        self.bdf = f"{self.pci_domain:04x}:{self.pci_bus:02x}:00.0"
        self.lock = threading.Lock()
        self.power_cap_uw = spec.default_power_limit_mw * 1000
        #: Ascending, in Hz, as amdsmi_get_clk_freq lists them.
        self.levels_hz = {
            "GFX": sorted(mhz * 1_000_000 for mhz in spec.graphics_clocks_mhz),
            "MEM": sorted(mhz * 1_000_000 for mhz in spec.memory_clocks_mhz),
        }
        #: The clock range (MHz) each clock may use: the full range until one is set.
        self.clk_range = {kind: self.full_range(kind) for kind in self.levels_hz}
        super().__init__(spec, AMD_FAULT_FUNCTIONS)
        #: MI300-class GPUs report current_socket_power as "N/A" and only the average.
        self.reports_current_power = False
        self._energy_uj = float(10**12 * (index + 1))
        self._energy_t = now

    def full_range(self, kind: str) -> tuple[int, int]:
        levels = self.levels_hz[kind]
        return levels[0] // 1_000_000, levels[-1] // 1_000_000

    def power_mw(self, t0: float, t1: float) -> float:
        return mean_power_mw(self.index, self.power_cap_uw / 1000, t0, t1)

    def energy_uj(self, now: float) -> float:
        """Integrate the draw up to *now*; call with ``lock`` held."""
        if now > self._energy_t:
            self._energy_uj += self.power_mw(self._energy_t, now) * (now - self._energy_t) * 1000
            self._energy_t = now
        return self._energy_uj


class SimAmdsmi:
    """Drop-in for the ``amdsmi`` module over simulated AMD GPUs.

    Latency, ``hold`` and faults apply only after :meth:`arm`, so start-up always succeeds;
    they apply to calls that take a processor handle.
    """

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiRetryException = AmdSmiRetryException
    AmdSmiTimeoutException = AmdSmiTimeoutException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiClkType = AmdSmiClkType

    def __init__(
        self, gpus: Sequence[SimGpuSpec], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        now = clock()
        self.devices: list[SimAmdGpu] = [SimAmdGpu(i, spec, now) for i, spec in enumerate(gpus)]
        self._lock = threading.Lock()
        self._init_count = 0
        self._armed = False

    def arm(self) -> None:
        """From now on latency, ``hold`` and faults apply."""
        self._armed = True

    def _check_init(self) -> None:
        with self._lock:
            if self._init_count == 0:
                _fail("AMDSMI_STATUS_NOT_INIT")

    def _device(self, handle: object, function: str) -> SimAmdGpu:
        if not isinstance(handle, SimAmdGpu):
            raise AmdSmiParameterException(handle, SimAmdGpu)
        self._check_init()
        if handle not in self.devices:
            _fail("AMDSMI_STATUS_INVAL")
        if self._armed:
            fault = handle.armed_call(function)
            if fault is not None:
                _fail(fault)
        return handle

    @staticmethod
    def _clock_kind(clk_type: object, function: str) -> str:
        if not isinstance(clk_type, AmdSmiClkType):
            raise AmdSmiParameterException(clk_type, AmdSmiClkType)
        kind = _CLOCK_KINDS.get(clk_type)
        if kind is None:
            _fail("AMDSMI_STATUS_NOT_SUPPORTED")
        return kind

    # -- library -------------------------------------------------------------------------

    def amdsmi_init(self, flag: object = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        with self._lock:
            self._init_count += 1

    def amdsmi_shut_down(self) -> None:
        with self._lock:
            if self._init_count == 0:
                _fail("AMDSMI_STATUS_NOT_INIT")
            self._init_count -= 1

    def amdsmi_get_processor_handles(self) -> list[SimAmdGpu]:
        self._check_init()
        return list(self.devices)

    # -- identity ------------------------------------------------------------------------

    def amdsmi_get_gpu_asic_info(self, processor_handle: object) -> dict[str, Any]:
        dev = self._device(processor_handle, "amdsmi_get_gpu_asic_info")
        return {
            "market_name": dev.spec.name,
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "subvendor_id": "0x1002",
            "device_id": "0x74a1",
            "rev_id": "0x00",
            "asic_serial": f"0x{0x5F00_0000_0000_0000 + dev.index:016X}",
            "oam_id": dev.index,
            "num_compute_units": 304,
            "target_graphics_version": "gfx942",
            "subsystem_id": "0x74a1",
        }

    def amdsmi_get_gpu_device_uuid(self, processor_handle: object) -> str:
        return self._device(processor_handle, "amdsmi_get_gpu_device_uuid").uuid

    def amdsmi_get_gpu_device_bdf(self, processor_handle: object) -> str:
        return self._device(processor_handle, "amdsmi_get_gpu_device_bdf").bdf

    # -- power ---------------------------------------------------------------------------

    def amdsmi_get_power_cap_info(self, processor_handle: object) -> dict[str, Any]:
        dev = self._device(processor_handle, "amdsmi_get_power_cap_info")
        with dev.lock:
            cap = dev.power_cap_uw
        return {
            "power_cap": cap,
            "default_power_cap": dev.spec.default_power_limit_mw * 1000,
            "dpm_cap": dev.full_range("GFX")[1],
            "min_power_cap": dev.spec.min_power_limit_mw * 1000,
            "max_power_cap": dev.spec.max_power_limit_mw * 1000,
        }

    def amdsmi_set_power_cap(self, processor_handle: object, sensor_ind: int, cap: int) -> None:
        if not isinstance(processor_handle, SimAmdGpu):
            raise AmdSmiParameterException(processor_handle, SimAmdGpu)
        sensor, cap = _int_arg(sensor_ind), _u64(_int_arg(cap))
        dev = self._device(processor_handle, "amdsmi_set_power_cap")
        low, high = dev.spec.min_power_limit_mw * 1000, dev.spec.max_power_limit_mw * 1000
        if sensor != 0 or not low <= cap <= high:
            _fail("AMDSMI_STATUS_INVAL")
        with dev.lock:
            dev.energy_uj(self._clock())  # energy so far was drawn under the old cap
            dev.power_cap_uw = cap

    def amdsmi_get_power_info(self, processor_handle: object) -> dict[str, Any]:
        dev = self._device(processor_handle, "amdsmi_get_power_info")
        with dev.lock:
            now = self._clock()
            watts = round(dev.power_mw(now, now) / 1000)
            cap_w = dev.power_cap_uw // 1_000_000
        return {
            "socket_power": watts,
            "current_socket_power": watts if dev.reports_current_power else _NA,
            "average_socket_power": watts,
            "gfx_voltage": _NA,
            "soc_voltage": _NA,
            "mem_voltage": _NA,
            "power_limit": cap_w,
        }

    def amdsmi_get_energy_count(self, processor_handle: object) -> dict[str, Any]:
        dev = self._device(processor_handle, "amdsmi_get_energy_count")
        if not dev.spec.energy_counter:
            _fail("AMDSMI_STATUS_NOT_SUPPORTED")
        with dev.lock:
            now = self._clock()
            ticks = int(dev.energy_uj(now) / COUNTER_RESOLUTION_UJ)
        return {
            "energy_accumulator": ticks,
            "counter_resolution": COUNTER_RESOLUTION_UJ,
            "timestamp": time.time_ns(),
        }

    # -- clocks --------------------------------------------------------------------------

    def amdsmi_get_clk_freq(self, processor_handle: object, clk_type: object) -> dict[str, Any]:
        kind = self._clock_kind(clk_type, "amdsmi_get_clk_freq")
        dev = self._device(processor_handle, f"amdsmi_get_clk_freq/{kind}")
        levels = dev.levels_hz[kind]
        with dev.lock:
            top = dev.clk_range[kind][1] * 1_000_000
        current = max(i for i, hz in enumerate(levels) if hz <= top or i == 0)
        return {"num_supported": len(levels), "current": current, "frequency": list(levels)}

    def amdsmi_set_gpu_clk_range(
        self, processor_handle: object, min_clk_value: int, max_clk_value: int, clk_type: object
    ) -> None:
        if not isinstance(processor_handle, SimAmdGpu):
            raise AmdSmiParameterException(processor_handle, SimAmdGpu)
        low, high = _u64(_int_arg(min_clk_value)), _u64(_int_arg(max_clk_value))
        kind = self._clock_kind(clk_type, "amdsmi_set_gpu_clk_range")
        dev = self._device(processor_handle, f"amdsmi_set_gpu_clk_range/{kind}")
        lowest, highest = dev.full_range(kind)
        if low > high or low < lowest or high > highest:
            _fail("AMDSMI_STATUS_INVAL")
        with dev.lock:
            dev.clk_range[kind] = (low, high)
