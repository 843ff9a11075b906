"""Every GPU method as a frozen attrs command: built from raw params, validated, then run.

Building a command checks every parameter against every target GPU (limits read at
start-up) and raises :class:`InvalidParamsError` before any GPU is touched. A built command
knows the blocking call to make on one GPU (``run``) and how to shape the per-GPU values
into the method's result (``result``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import attrs

from zeusd.core.errors import InvalidParamsError
from zeusd.core.omitted import OMITTED, Omitted
from zeusd.core.params import check_int, resolve_ids, show
from zeusd.gpu import ledger
from zeusd.gpu.backend import GpuInfo, NvmlCallError
from zeusd.gpu.device import GpuDevice

UINT32_MAX = 2**32 - 1
MIN_CLOCK_MHZ = 1


class GpuTable:
    """The node's GPUs by index; turns a ``gpu_ids`` param into validated targets."""

    def __init__(self, infos: Sequence[GpuInfo]) -> None:
        self.infos = tuple(infos)
        self._by_index = {info.index: info for info in infos}

    def resolve(self, gpu_ids: object) -> tuple[GpuInfo, ...]:
        """Validate a ``gpu_ids`` param; omitted (on a read) means every GPU."""
        return resolve_ids("gpu_ids", "GPU", gpu_ids, self._by_index)


def _int_in(low: int, high: int) -> Any:
    def validate(_: object, attribute: attrs.Attribute[int], value: object) -> None:
        check_int(attribute.name, value, low, high)

    return validate


def _bool_field() -> Any:
    def validate(_: object, attribute: attrs.Attribute[bool], value: object) -> None:
        if not isinstance(value, bool):
            raise InvalidParamsError(
                attribute.name, f"'{attribute.name}' must be true or false (got {show(value)})"
            )

    return attrs.field(validator=validate)


def _max_not_below_min(inst: Any, attribute: attrs.Attribute[int], value: int) -> None:
    # attrs runs validators after every field is set, so min_clock_mhz is already checked.
    if value < inst.min_clock_mhz:
        raise InvalidParamsError(
            attribute.name,
            f"'max_clock_mhz' must be >= 'min_clock_mhz' (got {inst.min_clock_mhz} > {value})",
            min=inst.min_clock_mhz,
            max=UINT32_MAX,
        )


class GpuCommand(Protocol):
    """What the dispatcher needs from a command."""

    gpus: tuple[GpuInfo, ...]

    def run(self, device: GpuDevice) -> Any:
        """The blocking NVML work on one GPU; runs in a worker thread."""

    def result(self, values: Mapping[int, Any]) -> Any:
        """Shape per-GPU values (keyed by GPU index, in request order) into the result."""


# --- writes -----------------------------------------------------------------------------


@attrs.frozen
class _Write:
    gpus: tuple[GpuInfo, ...]
    #: The GPU settings this write changes (see zeusd.gpu.ledger), for restoring them.
    settings: ClassVar[tuple[str, ...]] = ()

    def result(self, values: Mapping[int, Any]) -> Any:
        return {"applied": list(values)}


@attrs.frozen
class SetPowerLimit(_Write):
    settings = (ledger.POWER_LIMIT,)

    power_limit_mw: int = attrs.field()

    @power_limit_mw.validator
    def _check(self, attribute: attrs.Attribute[int], value: object) -> None:
        for gpu in self.gpus:
            low = gpu.min_power_limit_mw or 1
            high = gpu.max_power_limit_mw or UINT32_MAX
            check_int(attribute.name, value, low, high, where=f" for GPU {gpu.index}")

    def run(self, device: GpuDevice) -> None:
        device.set_power_limit(self.power_limit_mw)


@attrs.frozen
class ResetPowerLimit(_Write):
    settings = (ledger.POWER_LIMIT,)

    def run(self, device: GpuDevice) -> None:
        device.reset_power_limit()


@attrs.frozen
class SetPersistenceMode(_Write):
    settings = (ledger.PERSISTENCE_MODE,)

    enabled: bool = _bool_field()

    def run(self, device: GpuDevice) -> None:
        device.set_persistence_mode(self.enabled)


@attrs.frozen
class _LockClocks(_Write):
    min_clock_mhz: int = attrs.field(validator=_int_in(MIN_CLOCK_MHZ, UINT32_MAX))
    max_clock_mhz: int = attrs.field(
        validator=[_int_in(MIN_CLOCK_MHZ, UINT32_MAX), _max_not_below_min]
    )


@attrs.frozen
class SetGpuLockedClocks(_LockClocks):
    settings = (ledger.GPU_LOCKED_CLOCKS,)

    def run(self, device: GpuDevice) -> None:
        device.set_gpu_locked_clocks(self.min_clock_mhz, self.max_clock_mhz)


@attrs.frozen
class SetMemLockedClocks(_LockClocks):
    settings = (ledger.MEM_LOCKED_CLOCKS,)

    def run(self, device: GpuDevice) -> None:
        device.set_mem_locked_clocks(self.min_clock_mhz, self.max_clock_mhz)


@attrs.frozen
class ResetGpuLockedClocks(_Write):
    settings = (ledger.GPU_LOCKED_CLOCKS,)

    def run(self, device: GpuDevice) -> None:
        device.reset_gpu_locked_clocks()


@attrs.frozen
class ResetMemLockedClocks(_Write):
    settings = (ledger.MEM_LOCKED_CLOCKS,)

    def run(self, device: GpuDevice) -> None:
        device.reset_mem_locked_clocks()


@attrs.frozen
class ResetLockedClocks(_Write):
    settings = (ledger.GPU_LOCKED_CLOCKS, ledger.MEM_LOCKED_CLOCKS)

    def run(self, device: GpuDevice) -> None:
        device.reset_locked_clocks()


# --- reads ------------------------------------------------------------------------------


@attrs.frozen
class _ReadByGpu:
    """A read whose result is ``{"<id>": value}``."""

    gpus: tuple[GpuInfo, ...]

    def result(self, values: Mapping[int, Any]) -> Any:
        return {str(gpu): value for gpu, value in values.items()}


@attrs.frozen
class GetPowerLimit(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        return {"power_limit_mw": device.get_power_limit()}


@attrs.frozen
class GetPowerLimitConstraints(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        low, high = device.get_power_limit_constraints()
        return {
            "min_power_limit_mw": low,
            "max_power_limit_mw": high,
            "default_power_limit_mw": device.get_default_power_limit(),
        }


@attrs.frozen
class GetPersistenceMode(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        return {"enabled": device.get_persistence_mode()}


def _lock(pair: tuple[int, int] | None) -> dict[str, int] | None:
    return None if pair is None else {"min_clock_mhz": pair[0], "max_clock_mhz": pair[1]}


@attrs.frozen
class GetLockedClocks(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        graphics, memory = device.get_locked_clocks()
        return {"gpu_locked_clocks": _lock(graphics), "mem_locked_clocks": _lock(memory)}


@attrs.frozen
class GetCumulativeEnergy(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        return {"energy_mj": device.get_cumulative_energy()}


@attrs.frozen
class GetSupportedMemoryClocks(_ReadByGpu):
    def run(self, device: GpuDevice) -> Any:
        return {"memory_clocks_mhz": device.get_supported_memory_clocks()}


@attrs.frozen
class GetSupportedGraphicsClocks(_ReadByGpu):
    #: Left out: use each GPU's highest supported memory clock.
    memory_clock_mhz: int | Omitted = attrs.field(default=OMITTED)

    @memory_clock_mhz.validator
    def _check(self, attribute: attrs.Attribute[int | Omitted], value: object) -> None:
        if value is OMITTED:
            return
        check_int("memory_clock_mhz", value, MIN_CLOCK_MHZ, UINT32_MAX)
        for gpu in self.gpus:
            if gpu.memory_clocks_mhz is not None and value not in gpu.memory_clocks_mhz:
                supported = ", ".join(map(str, gpu.memory_clocks_mhz))
                raise InvalidParamsError(
                    "memory_clock_mhz",
                    f"{value} MHz is not a supported memory clock of GPU {gpu.index}"
                    f" (supported: {supported})",
                )

    def run(self, device: GpuDevice) -> Any:
        memory_clock = self.memory_clock_mhz
        if memory_clock is OMITTED:
            supported = device.get_supported_memory_clocks()
            if not supported:
                raise NvmlCallError("NVML_ERROR_NOT_SUPPORTED", "no supported memory clocks")
            memory_clock = max(supported)
        return {"graphics_clocks_mhz": device.get_supported_graphics_clocks(memory_clock)}


@attrs.frozen
class GetPower:
    """Instantaneous power of each GPU, stamped with the daemon's clock."""

    gpus: tuple[GpuInfo, ...]

    def run(self, device: GpuDevice) -> int:
        return device.get_power()

    def result(self, values: Mapping[int, Any]) -> Any:
        return {
            "timestamp_ms": int(time.time() * 1000),
            "power_mw": {str(gpu): value for gpu, value in values.items()},
        }
