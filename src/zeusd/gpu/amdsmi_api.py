"""The slice of the ``amdsmi`` Python package that zeusd uses, written down as a Protocol.

The AMD backend receives "an amdsmi" as a dependency: the real ``amdsmi`` module on AMD
nodes, ``zeusd.sim.SimAmdsmi`` elsewhere. Argument order and return shapes are amdsmi's
(checked against amdsmi 7.0): dicts with its key names, power caps in µW, socket power in
W, clock levels in Hz, clock ranges in MHz, the energy counter in ticks of
``counter_resolution`` µJ.
"""

from __future__ import annotations

from typing import Any, Protocol


class AmdsmiApi(Protocol):
    """Functions, enums and the exception of amdsmi called by :mod:`zeusd.gpu.amdsmi_backend`."""

    @property
    def AmdSmiLibraryException(self) -> type[Exception]:
        """Raised with ``err_code`` (an ``AMDSMI_STATUS_*`` code) and ``get_error_info()``."""

    #: ``INIT_AMD_GPUS``.
    AmdSmiInitFlags: Any
    #: ``GFX`` and ``MEM``.
    AmdSmiClkType: Any

    def amdsmi_init(self, flag: Any = ...) -> None: ...
    def amdsmi_shut_down(self) -> None: ...
    def amdsmi_get_processor_handles(self) -> list[Any]: ...
    def amdsmi_get_gpu_asic_info(self, processor_handle: Any) -> dict[str, Any]: ...
    def amdsmi_get_gpu_device_uuid(self, processor_handle: Any) -> str: ...
    def amdsmi_get_gpu_device_bdf(self, processor_handle: Any) -> str: ...
    def amdsmi_get_power_cap_info(self, processor_handle: Any) -> dict[str, Any]: ...
    def amdsmi_set_power_cap(self, processor_handle: Any, sensor_ind: int, cap: int) -> None: ...
    def amdsmi_get_power_info(self, processor_handle: Any) -> dict[str, Any]: ...
    def amdsmi_get_energy_count(self, processor_handle: Any) -> dict[str, Any]: ...
    def amdsmi_get_clk_freq(self, processor_handle: Any, clk_type: Any) -> dict[str, Any]: ...
    def amdsmi_set_gpu_clk_range(
        self, processor_handle: Any, min_clk_value: int, max_clk_value: int, clk_type: Any
    ) -> None: ...
