"""The NVML backend: what the daemon can do to one GPU, as blocking calls.

Everything here runs in a worker thread (see :mod:`zeusd.gpu.lanes`). The ``nvml`` object
is injected: the real ``pynvml`` module, or :class:`zeusd.sim.SimNvml`, which is how every
line of this file runs in the test suite without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from zeusd.gpu.nvml_api import NvmlApi
from zeusd.gpu.nvml_errors import error_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlCallError(Exception):
    """An NVML call failed; carries the error's name and message as clients see them."""

    def __init__(self, nvml_error: str, message: str) -> None:
        super().__init__(f"{nvml_error}: {message}")
        self.nvml_error = nvml_error
        self.message = message

    def detail(self) -> dict[str, str]:
        return {"nvml_error": self.nvml_error, "message": self.message}


def translate(exc: BaseException) -> NvmlCallError:
    """Turn a ``pynvml.NVMLError`` into the error clients see (the only place that does)."""
    return NvmlCallError(error_name(getattr(exc, "value", -1)), str(exc))


def reset_both_clocks(reset_gpu: Callable[[], None], reset_mem: Callable[[], None]) -> None:
    """Reset both clock locks; the second is attempted even when the first fails."""
    failures: list[tuple[str, NvmlCallError]] = []
    for what, reset in (("graphics", reset_gpu), ("memory", reset_mem)):
        try:
            reset()
        except NvmlCallError as exc:
            failures.append((what, exc))
    if failures:
        message = "; ".join(f"{what} clocks: {exc.message}" for what, exc in failures)
        raise NvmlCallError(failures[0][1].nvml_error, message)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings for us; be safe should a release hand back bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@attrs.frozen(kw_only=True)
class GpuInfo:
    """What the daemon learned about a GPU at start-up; used to validate requests."""

    index: int
    name: str
    uuid: str
    pci_address: str
    cumulative_energy_available: bool
    #: None when the GPU has no power management (then only NVML can refuse a limit).
    min_power_limit_mw: int | None
    max_power_limit_mw: int | None
    default_power_limit_mw: int | None
    #: None when the driver could not list them; then memory clocks are not pre-checked.
    memory_clocks_mhz: tuple[int, ...] | None

    def describe(self) -> dict[str, Any]:
        """The GPU as ``discover`` reports it."""
        return {
            "id": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "pci_address": self.pci_address,
            "cumulative_energy_available": self.cumulative_energy_available,
        }


class _PowerReadable(Protocol):
    @property
    def index(self) -> int: ...

    def get_power_limit_constraints(self) -> tuple[int, int]: ...
    def get_default_power_limit(self) -> int: ...
    def get_cumulative_energy(self) -> int: ...


@attrs.frozen
class PowerProbe:
    """What start-up learned of a GPU's power management and energy counter."""

    min_power_limit_mw: int | None
    max_power_limit_mw: int | None
    default_power_limit_mw: int | None
    cumulative_energy_available: bool

    def info(
        self,
        *,
        index: int,
        name: str,
        uuid: str,
        pci_address: str,
        memory_clocks_mhz: tuple[int, ...] | None,
    ) -> GpuInfo:
        """The GPU's start-up info: what this probe found plus the rest."""
        return GpuInfo(
            index=index,
            name=name,
            uuid=uuid,
            pci_address=pci_address,
            cumulative_energy_available=self.cumulative_energy_available,
            min_power_limit_mw=self.min_power_limit_mw,
            max_power_limit_mw=self.max_power_limit_mw,
            default_power_limit_mw=self.default_power_limit_mw,
            memory_clocks_mhz=memory_clocks_mhz,
        )


def probe_power(device: _PowerReadable) -> PowerProbe:
    """Read a GPU's power limit range and whether it counts energy; a missing one is logged.

    One GPU without power management or an energy counter must not keep the others from
    being served, so a failure here is an answer (None, False), not an error.
    """
    low: int | None
    high: int | None
    default: int | None
    try:
        low, high = device.get_power_limit_constraints()
        default = device.get_default_power_limit()
    except NvmlCallError as exc:
        low = high = default = None
        log.warning("GPU %d: no power limit constraints (%s)", device.index, exc)
    try:
        device.get_cumulative_energy()
        energy = True
    except NvmlCallError as exc:
        energy = False
        log.info("GPU %d: no cumulative energy counter (%s)", device.index, exc)
    return PowerProbe(low, high, default, energy)


class NvmlDevice:
    """One GPU's handle plus the operations the protocol offers on it (all blocking)."""

    def __init__(self, nvml: NvmlApi, index: int, handle: Any) -> None:
        self._nvml = nvml
        self.index = index
        self._handle = handle
        # NVML cannot read clock locks back: these are the ones set through this object and
        # not reset since, as (min MHz, max MHz) as requested (the driver may clamp them).
        self._gpu_locked: tuple[int, int] | None = None
        self._mem_locked: tuple[int, int] | None = None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(self._handle, *args)
        except self._nvml.NVMLError as exc:
            raise translate(exc) from exc

    def get_power_limit(self) -> int:
        return self._call(self._nvml.nvmlDeviceGetPowerManagementLimit)

    def get_power_limit_constraints(self) -> tuple[int, int]:
        low, high = self._call(self._nvml.nvmlDeviceGetPowerManagementLimitConstraints)
        return int(low), int(high)

    def get_default_power_limit(self) -> int:
        return self._call(self._nvml.nvmlDeviceGetPowerManagementDefaultLimit)

    def set_power_limit(self, milliwatts: int) -> None:
        self._call(self._nvml.nvmlDeviceSetPowerManagementLimit, milliwatts)

    def reset_power_limit(self) -> None:
        self.set_power_limit(self.get_default_power_limit())

    def get_persistence_mode(self) -> bool:
        mode = self._call(self._nvml.nvmlDeviceGetPersistenceMode)
        return bool(mode == self._nvml.NVML_FEATURE_ENABLED)

    def set_persistence_mode(self, enabled: bool) -> None:
        nvml = self._nvml
        mode = nvml.NVML_FEATURE_ENABLED if enabled else nvml.NVML_FEATURE_DISABLED
        self._call(nvml.nvmlDeviceSetPersistenceMode, mode)

    def get_power(self) -> int:
        return self._call(self._nvml.nvmlDeviceGetPowerUsage)

    def get_cumulative_energy(self) -> int:
        return self._call(self._nvml.nvmlDeviceGetTotalEnergyConsumption)

    def get_supported_memory_clocks(self) -> list[int]:
        return list(self._call(self._nvml.nvmlDeviceGetSupportedMemoryClocks))

    def get_supported_graphics_clocks(self, memory_clock_mhz: int) -> list[int]:
        return list(self._call(self._nvml.nvmlDeviceGetSupportedGraphicsClocks, memory_clock_mhz))

    def set_gpu_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._call(self._nvml.nvmlDeviceSetGpuLockedClocks, min_mhz, max_mhz)
        self._gpu_locked = (min_mhz, max_mhz)

    def reset_gpu_locked_clocks(self) -> None:
        self._call(self._nvml.nvmlDeviceResetGpuLockedClocks)
        self._gpu_locked = None

    def set_mem_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._call(self._nvml.nvmlDeviceSetMemoryLockedClocks, min_mhz, max_mhz)
        self._mem_locked = (min_mhz, max_mhz)

    def reset_mem_locked_clocks(self) -> None:
        self._call(self._nvml.nvmlDeviceResetMemoryLockedClocks)
        self._mem_locked = None

    def get_locked_clocks(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(graphics, memory) locks set through this daemon and not reset since, or None.

        NVML has no call that reads a lock back, so a lock set by another program (or by an
        earlier daemon) is not seen.
        """
        return self._gpu_locked, self._mem_locked

    def reset_locked_clocks(self) -> None:
        reset_both_clocks(self.reset_gpu_locked_clocks, self.reset_mem_locked_clocks)

    def read_info(self) -> GpuInfo:
        """Read what request validation needs; done once, at start-up."""
        nvml = self._nvml
        power = probe_power(self)
        try:
            memory_clocks: tuple[int, ...] | None = tuple(self.get_supported_memory_clocks())
        except NvmlCallError as exc:
            memory_clocks = None
            log.info("GPU %d: cannot list memory clocks (%s)", self.index, exc.nvml_error)
        pci = self._call(nvml.nvmlDeviceGetPciInfo)
        return power.info(
            index=self.index,
            name=_text(self._call(nvml.nvmlDeviceGetName)),
            uuid=_text(self._call(nvml.nvmlDeviceGetUUID)),
            pci_address=_text(pci.busId),
            memory_clocks_mhz=memory_clocks,
        )


@attrs.define
class NvmlBackend:
    """An initialised NVML with a device object and start-up info for every GPU."""

    name: str
    nvml: NvmlApi
    devices: Sequence[NvmlDevice]
    infos: Sequence[GpuInfo]

    @classmethod
    def open(cls, nvml: NvmlApi, name: str = "nvml") -> NvmlBackend:
        """Initialise NVML and read every GPU. Raises NvmlCallError if NVML is unusable."""
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as exc:
            raise translate(exc) from exc
        devices = [NvmlDevice(nvml, i, h) for i, h in enumerate(handles)]
        try:
            infos = [device.read_info() for device in devices]
        except NvmlCallError:
            nvml.nvmlShutdown()
            raise
        return cls(name=name, nvml=nvml, devices=devices, infos=infos)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as exc:  # nothing useful left to do at exit
            log.warning("nvmlShutdown failed: %s", exc)
