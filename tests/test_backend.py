"""The NVML backend over the simulated NVML: info at start-up, operations, error translation."""

from __future__ import annotations

import pynvml
import pytest

from zeusd.gpu.backend import NvmlBackend, NvmlCallError, translate
from zeusd.sim import SimGpuSpec, SimNvml, default_sim_gpus


def _open(*specs: SimGpuSpec) -> tuple[NvmlBackend, SimNvml]:
    sim = SimNvml(list(specs) or default_sim_gpus(2))
    backend = NvmlBackend.open(sim, name="sim")
    sim.arm()
    return backend, sim


def test_start_up_reads_what_validation_needs() -> None:
    """Name, UUID, PCI address, limits and memory clocks come from NVML at start-up."""
    backend, sim = _open(SimGpuSpec(min_power_limit_mw=150_000, default_power_limit_mw=600_000))
    (info,) = backend.infos
    assert info.index == 0
    assert info.name == "NVIDIA H100 80GB HBM3"
    assert info.uuid == sim.devices[0].uuid
    assert info.pci_address == "00000000:18:00.0"
    assert (info.min_power_limit_mw, info.max_power_limit_mw) == (150_000, 700_000)
    assert info.default_power_limit_mw == 600_000
    assert info.memory_clocks_mhz == (2619,)
    assert info.cumulative_energy_available is True
    backend.close()


def test_missing_energy_counter_is_detected() -> None:
    """A GPU whose energy read is NOT_SUPPORTED is reported without a counter."""
    backend, _ = _open(SimGpuSpec(energy_counter=False))
    assert backend.infos[0].cumulative_energy_available is False


def test_faults_do_not_apply_at_start_up() -> None:
    """Start-up succeeds even when the calls it makes are faulted (they apply once armed)."""
    backend, _ = _open(SimGpuSpec(faults={"get_power_limit_constraints": "NVML_ERROR_UNKNOWN"}))
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].get_power_limit_constraints()
    assert info.value.nvml_error == "NVML_ERROR_UNKNOWN"


def test_nvml_error_is_translated_with_name_and_message() -> None:
    """pynvml's exception becomes the name and message clients see."""
    error = translate(pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION))
    assert error.detail() == {
        "nvml_error": "NVML_ERROR_NO_PERMISSION",
        "message": "Insufficient Permissions",
    }


def test_operations_change_and_report_state() -> None:
    """Each write is visible in the simulated GPU and through the matching read."""
    backend, sim = _open()
    device = backend.devices[1]
    device.set_power_limit(300_000)
    assert device.get_power_limit() == 300_000
    device.reset_power_limit()
    assert sim.devices[1].power_limit_mw == 700_000
    device.set_persistence_mode(True)
    assert device.get_persistence_mode() is True
    device.set_gpu_locked_clocks(1005, 1500)
    device.set_mem_locked_clocks(2619, 2619)
    assert sim.devices[1].gpu_locked_clocks == (1005, 1500)
    device.reset_locked_clocks()
    assert sim.devices[1].gpu_locked_clocks is None
    assert sim.devices[1].mem_locked_clocks is None
    assert device.get_supported_graphics_clocks(2619)[0] == 1980


def test_reset_locked_clocks_attempts_both_when_first_fails() -> None:
    """A failing graphics-clock reset still lets the memory-clock reset run."""
    backend, sim = _open(SimGpuSpec(faults={"reset_gpu_locked_clocks": "NVML_ERROR_NO_PERMISSION"}))
    device = backend.devices[0]
    device.set_mem_locked_clocks(2619, 2619)
    with pytest.raises(NvmlCallError) as info:
        device.reset_locked_clocks()
    assert info.value.nvml_error == "NVML_ERROR_NO_PERMISSION"
    assert info.value.message.startswith("graphics clocks:")
    assert sim.devices[0].mem_locked_clocks is None


def test_reset_locked_clocks_reports_both_failures() -> None:
    """When both resets fail, the message names both."""
    backend, _ = _open(SimGpuSpec(faults={"reset_locked_clocks": "NVML_ERROR_TIMEOUT"}))
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].reset_locked_clocks()
    assert "graphics clocks" in info.value.message
    assert "memory clocks" in info.value.message


def test_open_fails_cleanly_when_nvml_init_fails() -> None:
    """An NVML that cannot initialise gives NvmlCallError, not a stray pynvml exception."""

    class BrokenNvml(SimNvml):
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    with pytest.raises(NvmlCallError) as info:
        NvmlBackend.open(BrokenNvml(default_sim_gpus(1)))
    assert info.value.nvml_error == "NVML_ERROR_DRIVER_NOT_LOADED"


def test_gpu_without_power_management_does_not_block_start_up() -> None:
    """If one GPU cannot report power limits, start-up still serves it and the others."""

    class NoPowerManagement(SimNvml):
        def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
            if getattr(handle, "index", None) == 1:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return super().nvmlDeviceGetPowerManagementLimitConstraints(handle)

    backend = NvmlBackend.open(NoPowerManagement(default_sim_gpus(2)))
    assert backend.infos[0].max_power_limit_mw == 700_000
    assert backend.infos[1].min_power_limit_mw is None
    assert backend.infos[1].default_power_limit_mw is None
