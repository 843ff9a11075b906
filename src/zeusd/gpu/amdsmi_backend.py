"""The amdsmi backend: the protocol's GPU operations on AMD GPUs, as blocking calls.

The ``amdsmi`` object is injected: the real ``amdsmi`` module, or
:class:`zeusd.sim.SimAmdsmi`, which is how every line here runs in the test suite. Units are
converted to the wire's here and nowhere else: power caps µW -> mW, socket power W -> mW,
clock levels Hz -> MHz, the energy counter (ticks of ``counter_resolution`` µJ) -> mJ.
AMD GPUs have no persistence mode: both of its methods fail NVML_ERROR_NOT_SUPPORTED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from zeusd.gpu.amdsmi_api import AmdsmiApi
from zeusd.gpu.amdsmi_errors import nvml_name, status_name
from zeusd.gpu.backend import GpuInfo, NvmlCallError, probe_power, reset_both_clocks

log = logging.getLogger(__name__)
T = TypeVar("T")

#: amdsmi_set_power_cap's sensor index: the GPU's (only) power limit.
_POWER_SENSOR = 0
_UW_PER_MW = 1000
_HZ_PER_MHZ = 1_000_000


def translate(exc: BaseException) -> NvmlCallError:
    """Turn an ``AmdSmiLibraryException`` into the error clients see (the only place that
    does): the NVML name that means the same, and the amdsmi status in the message."""
    code = getattr(exc, "err_code", None)
    code = code if isinstance(code, int) else 0xFFFFFFFF
    info = getattr(exc, "get_error_info", None)
    text = info() if callable(info) else str(exc)
    name = status_name(code)
    message = str(text) if str(text).startswith(name) else f"{name}: {text}"
    return NvmlCallError(nvml_name(code), message)


def _not_supported(what: str) -> NvmlCallError:
    return NvmlCallError("NVML_ERROR_NOT_SUPPORTED", f"{what} is not supported on AMD GPUs")


def _watts(value: object) -> int | None:
    # amdsmi reports a missing reading as the string "N/A".
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class AmdsmiDevice:
    """One AMD GPU's processor handle plus the operations the protocol offers on it."""

    def __init__(self, amdsmi: AmdsmiApi, index: int, handle: Any) -> None:
        self._amdsmi = amdsmi
        self.index = index
        self._handle = handle
        #: The full clock ranges (MHz) found at start-up: what a reset puts back.
        self._ranges: dict[str, tuple[int, int]] = {}
        #: The ranges locked through this object and not reset since, as requested.
        self._locked: dict[str, tuple[int, int] | None] = {"GFX": None, "MEM": None}

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self._handle, *args)
        except self._amdsmi.AmdSmiLibraryException as exc:
            raise translate(exc) from exc

    def _cap_info(self) -> dict[str, Any]:
        return self._call(self._amdsmi.amdsmi_get_power_cap_info)

    def get_power_limit(self) -> int:
        return round(int(self._cap_info()["power_cap"]) / _UW_PER_MW)

    def get_power_limit_constraints(self) -> tuple[int, int]:
        info = self._cap_info()
        # Rounded inwards, so that every mW value in range is a µW value amdsmi accepts.
        low = -(-int(info["min_power_cap"]) // _UW_PER_MW)
        high = int(info["max_power_cap"]) // _UW_PER_MW
        return low, high

    def get_default_power_limit(self) -> int:
        return round(int(self._cap_info()["default_power_cap"]) / _UW_PER_MW)

    def set_power_limit(self, milliwatts: int) -> None:
        self._call(self._amdsmi.amdsmi_set_power_cap, _POWER_SENSOR, milliwatts * _UW_PER_MW)

    def reset_power_limit(self) -> None:
        default_uw = int(self._cap_info()["default_power_cap"])
        self._call(self._amdsmi.amdsmi_set_power_cap, _POWER_SENSOR, default_uw)

    def get_persistence_mode(self) -> bool:
        raise _not_supported("persistence mode")

    def set_persistence_mode(self, enabled: bool) -> None:
        raise _not_supported("persistence mode")

    def get_power(self) -> int:
        info = self._call(self._amdsmi.amdsmi_get_power_info)
        # MI300-class GPUs report only the average; older ones only the current draw.
        watts = _watts(info.get("current_socket_power"))
        if watts is None:
            watts = _watts(info.get("average_socket_power"))
        if watts is None:
            raise NvmlCallError("NVML_ERROR_NOT_SUPPORTED", "amdsmi reports no socket power")
        return watts * 1000

    def get_cumulative_energy(self) -> int:
        count = self._call(self._amdsmi.amdsmi_get_energy_count)
        microjoules = int(count["energy_accumulator"] * count["counter_resolution"])
        return microjoules // 1000

    def _levels_mhz(self, kind: str) -> list[int]:
        clk_type = getattr(self._amdsmi.AmdSmiClkType, kind)
        freq = self._call(self._amdsmi.amdsmi_get_clk_freq, clk_type)
        levels = {round(hz / _HZ_PER_MHZ) for hz in freq["frequency"][: freq["num_supported"]]}
        return sorted(levels, reverse=True)  # highest first, as NVML lists them

    def get_supported_memory_clocks(self) -> list[int]:
        return self._levels_mhz("MEM")

    def get_supported_graphics_clocks(self, memory_clock_mhz: int) -> list[int]:
        # AMD's graphics levels do not depend on the memory clock.
        return self._levels_mhz("GFX")

    def _set_range(self, kind: str, min_mhz: int, max_mhz: int) -> None:
        clk_type = getattr(self._amdsmi.AmdSmiClkType, kind)
        self._call(self._amdsmi.amdsmi_set_gpu_clk_range, min_mhz, max_mhz, clk_type)
        self._locked[kind] = (min_mhz, max_mhz)

    def _reset_range(self, kind: str) -> None:
        full = self._ranges.get(kind)
        if full is None:
            raise NvmlCallError(
                "NVML_ERROR_NOT_SUPPORTED",
                f"the {kind} clock range could not be read at start-up, so it cannot be reset",
            )
        self._set_range(kind, *full)
        self._locked[kind] = None

    def set_gpu_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._set_range("GFX", min_mhz, max_mhz)

    def reset_gpu_locked_clocks(self) -> None:
        self._reset_range("GFX")

    def set_mem_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._set_range("MEM", min_mhz, max_mhz)

    def reset_mem_locked_clocks(self) -> None:
        self._reset_range("MEM")

    def get_locked_clocks(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(graphics, memory) ranges locked through this daemon and not reset since."""
        return self._locked["GFX"], self._locked["MEM"]

    def reset_locked_clocks(self) -> None:
        reset_both_clocks(self.reset_gpu_locked_clocks, self.reset_mem_locked_clocks)

    def read_info(self) -> GpuInfo:
        """Read what request validation and clock resets need; done once, at start-up."""
        amdsmi = self._amdsmi
        power = probe_power(self)
        memory_clocks: tuple[int, ...] | None = None
        for kind in ("GFX", "MEM"):
            try:
                levels = self._levels_mhz(kind)
            except NvmlCallError as exc:
                log.info("GPU %d: cannot list %s clocks (%s)", self.index, kind, exc.message)
                continue
            if levels:
                self._ranges[kind] = (min(levels), max(levels))
            if kind == "MEM":
                memory_clocks = tuple(levels)
        asic = self._call(amdsmi.amdsmi_get_gpu_asic_info)
        return power.info(
            index=self.index,
            name=str(asic.get("market_name") or "AMD GPU"),
            uuid=self._call(amdsmi.amdsmi_get_gpu_device_uuid),
            pci_address=self._call(amdsmi.amdsmi_get_gpu_device_bdf),
            memory_clocks_mhz=memory_clocks,
        )


@attrs.define
class AmdsmiBackend:
    """An initialised amdsmi with a device object and start-up info for every AMD GPU."""

    name: str
    amdsmi: AmdsmiApi
    devices: Sequence[AmdsmiDevice]
    infos: Sequence[GpuInfo]

    @classmethod
    def open(cls, amdsmi: AmdsmiApi, name: str = "amdsmi") -> AmdsmiBackend:
        """Initialise amdsmi for AMD GPUs and read every GPU. Raises NvmlCallError."""
        try:
            amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
            handles = list(amdsmi.amdsmi_get_processor_handles())
        except amdsmi.AmdSmiLibraryException as exc:
            raise translate(exc) from exc
        devices = [AmdsmiDevice(amdsmi, i, h) for i, h in enumerate(handles)]
        try:
            infos = [device.read_info() for device in devices]
        except NvmlCallError:
            amdsmi.amdsmi_shut_down()
            raise
        return cls(name=name, amdsmi=amdsmi, devices=devices, infos=infos)

    def close(self) -> None:
        try:
            self.amdsmi.amdsmi_shut_down()
        except self.amdsmi.AmdSmiLibraryException as exc:  # nothing useful left at exit
            log.warning("amdsmi_shut_down failed: %s", translate(exc).message)
