"""Zeus GPU objects that do everything through zeusd, so the Zeus process needs no NVML.

    import zeusd.zeus_backend
    zeusd.zeus_backend.install()        # before the first zeus.device.get_gpus() call
    from zeus.monitor import ZeusMonitor
    monitor = ZeusMonitor()              # measures through the daemon

``install`` fills the singleton that ``zeus.device.gpu.get_gpus`` returns, so every Zeus
component in this process (ZeusMonitor, optimizers) uses the daemon. Needs the ``zeus``
extra: ``pip install 'zeusd[zeus]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import zeus.device.gpu as zeus_gpu
from zeus.device.exception import ZeusdError as ZeusDaemonError
from zeus.device.gpu import common as zc

from zeusd.client import ZeusdClient, ZeusdConnectionError, ZeusdRpcError
from zeusd.client import errors as ce

T = TypeVar("T")

#: NVML error names (as zeusd reports them in a Device error) -> Zeus's exception classes.
_NVML_TO_ZEUS: dict[str, type[Exception]] = {
    "NVML_ERROR_UNINITIALIZED": zc.ZeusGPUInitError,
    "NVML_ERROR_INVALID_ARGUMENT": zc.ZeusGPUInvalidArgError,
    "NVML_ERROR_NOT_SUPPORTED": zc.ZeusGPUNotSupportedError,
    "NVML_ERROR_NO_PERMISSION": zc.ZeusGPUNoPermissionError,
    "NVML_ERROR_ALREADY_INITIALIZED": zc.ZeusGPUAlreadyInitializedError,
    "NVML_ERROR_NOT_FOUND": zc.ZeusGPUNotFoundError,
    "NVML_ERROR_INSUFFICIENT_SIZE": zc.ZeusGPUInsufficientSizeError,
    "NVML_ERROR_INSUFFICIENT_POWER": zc.ZeusGPUInsufficientPowerError,
    "NVML_ERROR_DRIVER_NOT_LOADED": zc.ZeusGPUDriverNotLoadedError,
    "NVML_ERROR_TIMEOUT": zc.ZeusGPUTimeoutError,
    "NVML_ERROR_IRQ_ISSUE": zc.ZeusGPUIRQError,
    "NVML_ERROR_LIBRARY_NOT_FOUND": zc.ZeusGPULibraryNotFoundError,
    "NVML_ERROR_FUNCTION_NOT_FOUND": zc.ZeusGPUFunctionNotFoundError,
    "NVML_ERROR_CORRUPTED_INFOROM": zc.ZeusGPUCorruptedInfoROMError,
    "NVML_ERROR_GPU_IS_LOST": zc.ZeusGPULostError,
    "NVML_ERROR_RESET_REQUIRED": zc.ZeusGPUResetRequiredError,
    "NVML_ERROR_OPERATING_SYSTEM": zc.ZeusGPUOperatingSystemError,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": zc.ZeusGPULibRMVersionMismatchError,
    "NVML_ERROR_MEMORY": zc.ZeusGPUMemoryError,
    "NVML_ERROR_UNKNOWN": zc.ZeusGPUUnknownError,
}

#: JSON-RPC errors other than Device error -> Zeus's exception classes.
_RPC_TO_ZEUS: dict[type[ZeusdRpcError], type[Exception]] = {
    ce.InvalidParamsError: zc.ZeusGPUInvalidArgError,
    ce.PermissionDeniedError: zc.ZeusGPUNoPermissionError,
    ce.AuthenticationRequiredError: zc.ZeusGPUNoPermissionError,
    ce.GroupDisabledError: zc.ZeusGPUNotSupportedError,
    ce.MethodNotFoundError: zc.ZeusGPUNotSupportedError,
}


def zeus_error(exc: Exception) -> Exception:
    """The Zeus exception a Zeus user expects for a client exception."""
    cls: type[Exception] = ZeusDaemonError
    if isinstance(exc, ce.DeviceError):
        # One NVML error on every failed GPU maps to its Zeus class; a mix is "unknown".
        names = set(exc.nvml_errors().values())
        only = names.pop() if len(names) == 1 else ""
        cls = _NVML_TO_ZEUS.get(only, zc.ZeusGPUUnknownError)
    elif isinstance(exc, ZeusdRpcError):
        cls = _RPC_TO_ZEUS.get(type(exc), zc.ZeusGPUUnknownError)
    return cls(str(exc))


def _translated(call: Callable[[], T]) -> T:
    try:
        return call()
    except (ZeusdRpcError, ZeusdConnectionError) as exc:
        raise zeus_error(exc) from exc


class ZeusdGPU(zc.GPU):
    """One GPU (by the daemon's index) whose every call is a zeusd request."""

    def __init__(
        self, gpu_index: int, client: ZeusdClient, name: str, has_energy_counter: bool
    ) -> None:
        super().__init__(gpu_index)
        self._client = client
        self._ids = [gpu_index]
        self._name = name
        self._has_energy_counter = has_energy_counter
        # The daemon holds the privilege, so Zeus's SYS_ADMIN warning does not apply.
        self._disable_sys_admin_warning = True

    def _read(self, method: Callable[..., dict[int, T]], **kwargs: Any) -> T:
        return _translated(lambda: method(self._ids, **kwargs)[self.gpu_index])

    def _write(self, method: Callable[..., object], *args: Any, block: bool) -> None:
        _translated(lambda: method(self._ids, *args, block=block))

    @property
    def supports_nonblocking_setters(self) -> bool:
        return True

    def get_name(self) -> str:
        return self._name

    def get_power_management_limit_constraints(self) -> tuple[int, int]:
        c = self._read(self._client.get_power_limit_constraints)
        return (c.min_power_limit_mw, c.max_power_limit_mw)

    def get_power_management_limit(self) -> int:
        return self._read(self._client.get_power_limit)

    def set_power_management_limit(self, power_limit_mw: int, block: bool = True) -> None:
        self._write(self._client.set_power_limit, power_limit_mw, block=block)

    def reset_power_management_limit(self, block: bool = True) -> None:
        self._write(self._client.reset_power_limit, block=block)

    def set_persistence_mode(self, enabled: bool, block: bool = True) -> None:
        self._write(self._client.set_persistence_mode, enabled, block=block)

    def get_persistence_mode(self) -> bool:
        return self._read(self._client.get_persistence_mode)

    def get_supported_memory_clocks(self) -> list[int]:
        return self._read(self._client.get_supported_memory_clocks)

    def set_memory_locked_clocks(
        self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True
    ) -> None:
        self._write(self._client.set_mem_locked_clocks, min_clock_mhz, max_clock_mhz, block=block)

    def reset_memory_locked_clocks(self, block: bool = True) -> None:
        self._write(self._client.reset_mem_locked_clocks, block=block)

    def get_supported_graphics_clocks(self, memory_clock_mhz: int | None = None) -> list[int]:
        return self._read(
            self._client.get_supported_graphics_clocks, memory_clock_mhz=memory_clock_mhz
        )

    def set_gpu_locked_clocks(
        self, min_clock_mhz: int, max_clock_mhz: int, block: bool = True
    ) -> None:
        self._write(self._client.set_gpu_locked_clocks, min_clock_mhz, max_clock_mhz, block=block)

    def reset_gpu_locked_clocks(self, block: bool = True) -> None:
        self._write(self._client.reset_gpu_locked_clocks, block=block)

    def get_instant_power_usage(self) -> int:
        reading = _translated(lambda: self._client.get_power(self._ids))
        return reading.power_mw[self.gpu_index]

    def get_average_power_usage(self) -> int:
        raise zc.ZeusGPUNotSupportedError("zeusd serves instant power only (gpu.get_power)")

    def get_average_memory_power_usage(self) -> int:
        raise zc.ZeusGPUNotSupportedError("zeusd does not serve memory power")

    def supports_get_total_energy_consumption(self) -> bool:
        return self._has_energy_counter

    def get_total_energy_consumption(self) -> int:
        return self._read(self._client.get_cumulative_energy)

    def get_gpu_temperature(self) -> int:
        raise zc.ZeusGPUNotSupportedError("zeusd does not serve GPU temperature")


def visible_indices(all_ids: Sequence[int], environ: dict[str, str] | None = None) -> list[int]:
    """The daemon GPU ids this process sees, honoring ``CUDA_VISIBLE_DEVICES`` like Zeus."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(all_ids)
    if not visible:
        raise zc.ZeusGPUInitError(
            "CUDA_VISIBLE_DEVICES is set to an empty string; unset it or list GPU indices"
        )
    if visible.startswith("MIG"):
        raise zc.ZeusGPUInitError(
            "CUDA_VISIBLE_DEVICES names MIG devices, which zeusd cannot measure"
        )
    try:
        indices = [int(part) for part in visible.split(",")]
    except ValueError:
        raise zc.ZeusGPUInitError(
            f"CUDA_VISIBLE_DEVICES must be comma-separated GPU indices (got {visible!r})"
        ) from None
    missing = [i for i in indices if i not in all_ids]
    if missing:
        raise zc.ZeusGPUInitError(
            f"CUDA_VISIBLE_DEVICES names GPUs {missing} that zeusd does not have "
            f"(it has {list(all_ids)})"
        )
    return indices


class ZeusdGPUs(zc.GPUs):
    """Zeus's GPU collection over zeusd. Index ``i`` is the i-th visible GPU, as in Zeus."""

    def __init__(self, ensure_homogeneous: bool = False, client: ZeusdClient | None = None) -> None:
        self._owns_client = client is None
        self._client = ZeusdClient.from_env() if client is None else client
        discovery = _translated(self._client.discover)
        by_id = {g.id: g for g in discovery.gpus}
        self._gpus = [
            ZeusdGPU(i, self._client, by_id[i].name, by_id[i].cumulative_energy_available)
            for i in visible_indices(sorted(by_id))
        ]
        if ensure_homogeneous:
            self._ensure_homogeneous()

    @property
    def gpus(self) -> Sequence[ZeusdGPU]:
        return self._gpus

    def __del__(self) -> None:
        if getattr(self, "_owns_client", False):
            self._client.close()


def install(client: ZeusdClient | None = None, ensure_homogeneous: bool = False) -> ZeusdGPUs:
    """Make ``zeus.device.get_gpus()`` return GPUs served by zeusd, and return them.

    Without *client*, one is made from ``ZEUSD_SOCK_PATH`` / ``ZEUSD_HOST_PORT`` /
    ``ZEUSD_TOKEN``. Zeus objects created before this call keep the GPUs they already got.
    """
    gpus = ZeusdGPUs(ensure_homogeneous, client)
    zeus_gpu._gpus = gpus
    return gpus


def uninstall() -> None:
    """Forget the installed GPUs; the next ``get_gpus()`` picks a backend as Zeus normally does."""
    zeus_gpu._gpus = None
