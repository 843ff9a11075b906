"""The amdsmi backend over the simulated amdsmi: units, start-up info, error translation."""

from __future__ import annotations

import pynvml
import pytest

from zeusd.gpu.amdsmi_backend import AmdsmiBackend, translate
from zeusd.gpu.amdsmi_errors import STATUS, nvml_name
from zeusd.gpu.backend import NvmlCallError
from zeusd.gpu.nvml_errors import ERROR_CODES
from zeusd.sim import SimAmdsmi, SimGpuSpec, default_sim_gpus
from zeusd.sim.amdsmi import COUNTER_RESOLUTION_UJ, AmdSmiLibraryException


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _open(*specs: SimGpuSpec, clock: FakeClock | None = None) -> tuple[AmdsmiBackend, SimAmdsmi]:
    sim = SimAmdsmi(list(specs) or default_sim_gpus(2, "amd"), clock=clock or FakeClock())
    backend = AmdsmiBackend.open(sim)
    sim.arm()
    return backend, sim


def test_start_up_reads_identity_limits_and_clocks() -> None:
    """Name, UUID, BDF, mW limits and MHz memory clocks come from amdsmi at start-up."""
    backend, sim = _open()
    info = backend.infos[1]
    assert backend.name == "amdsmi"
    assert info.name == "AMD Instinct MI300X"
    assert info.uuid == sim.devices[1].uuid
    assert info.pci_address == "0000:15:00.0"
    assert (info.min_power_limit_mw, info.max_power_limit_mw) == (200_000, 750_000)
    assert info.default_power_limit_mw == 750_000
    assert info.memory_clocks_mhz == (1300, 1200, 1100, 900)
    assert info.cumulative_energy_available is True
    backend.close()


def test_power_cap_is_microwatts_in_amdsmi_and_milliwatts_here() -> None:
    """A set limit reaches amdsmi as µW and reads back as the same mW."""
    backend, sim = _open()
    device = backend.devices[0]
    device.set_power_limit(312_345)
    assert sim.devices[0].power_cap_uw == 312_345_000
    assert device.get_power_limit() == 312_345
    device.reset_power_limit()
    assert sim.devices[0].power_cap_uw == 750_000_000
    assert device.get_power_limit_constraints() == (200_000, 750_000)
    assert device.get_default_power_limit() == 750_000


def test_constraints_round_inwards_to_whole_milliwatts() -> None:
    """µW limits that are not whole mW round so every mW in range is a valid cap."""
    backend, sim = _open()
    device = backend.devices[0]
    spec = sim.devices[0]
    # Reach into amdsmi's answer: a card whose limits are not multiples of 1000 µW.
    original = sim.amdsmi_get_power_cap_info

    def odd(handle: object) -> dict[str, object]:
        info = original(handle)
        return {**info, "min_power_cap": 200_000_001, "max_power_cap": 749_999_999}

    sim.amdsmi_get_power_cap_info = odd  # type: ignore[method-assign,assignment]
    assert device.get_power_limit_constraints() == (200_001, 749_999)
    assert spec.power_cap_uw == 750_000_000


def test_power_is_watts_in_amdsmi_and_milliwatts_here() -> None:
    """Socket power (whole W, the average on MI300) is reported in mW; current is preferred."""
    clock = FakeClock()
    backend, sim = _open(clock=clock)
    device = backend.devices[0]
    expected_w = round(sim.devices[0].power_mw(clock.now, clock.now) / 1000)
    assert device.get_power() == expected_w * 1000
    sim.devices[0].reports_current_power = True
    assert device.get_power() == expected_w * 1000
    assert sim.amdsmi_get_power_info(sim.devices[1])["current_socket_power"] == "N/A"


def test_power_without_any_reading_is_not_supported() -> None:
    """Both socket power fields "N/A" is NOT_SUPPORTED, not a crash or a zero."""
    backend, sim = _open()
    original = sim.amdsmi_get_power_info

    def missing(handle: object) -> dict[str, object]:
        return {**original(handle), "current_socket_power": "N/A", "average_socket_power": "N/A"}

    sim.amdsmi_get_power_info = missing  # type: ignore[method-assign,assignment]
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].get_power()
    assert info.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"


def test_energy_counter_ticks_times_resolution_is_millijoules() -> None:
    """The accumulator times its µJ resolution, in mJ, and it grows with simulated draw."""
    clock = FakeClock()
    backend, sim = _open(clock=clock)
    device = backend.devices[0]
    raw = sim.amdsmi_get_energy_count(sim.devices[0])
    assert raw["counter_resolution"] == pytest.approx(15.259, rel=1e-6)
    expected = int(raw["energy_accumulator"] * raw["counter_resolution"]) // 1000
    first = device.get_cumulative_energy()
    assert first == expected
    clock.now += 10.0
    drawn_mj = sim.devices[0].power_mw(clock.now - 10.0, clock.now) * 10.0
    grown = device.get_cumulative_energy() - first
    # One tick of the counter is about 15 µJ; the rest is the mJ floor on each side.
    assert abs(grown - drawn_mj) <= 2 + COUNTER_RESOLUTION_UJ / 1000


def test_missing_energy_counter_is_detected() -> None:
    """A GPU whose energy read is NOT_SUPPORTED is reported without a counter."""
    backend, _ = _open(SimGpuSpec(energy_counter=False))
    assert backend.infos[0].cumulative_energy_available is False
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].get_cumulative_energy()
    assert info.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"


def test_clock_levels_are_hertz_in_amdsmi_and_megahertz_here() -> None:
    """Supported clocks come from amdsmi_get_clk_freq (Hz), highest first, in MHz."""
    backend, sim = _open()
    device = backend.devices[0]
    raw = sim.amdsmi_get_clk_freq(sim.devices[0], sim.AmdSmiClkType.GFX)
    assert raw["frequency"] == [500_000_000, 1_300_000_000, 2_100_000_000]
    assert device.get_supported_graphics_clocks(1300) == [2100, 1300, 500]
    assert device.get_supported_memory_clocks() == [1300, 1200, 1100, 900]


def test_locked_clocks_set_a_range_and_reset_to_the_full_one() -> None:
    """Locks go to amdsmi_set_gpu_clk_range (min, max, type); resets restore start-up's range."""
    backend, sim = _open()
    device, gpu = backend.devices[0], sim.devices[0]
    device.set_gpu_locked_clocks(900, 1800)
    device.set_mem_locked_clocks(1100, 1200)
    assert gpu.clk_range == {"GFX": (900, 1800), "MEM": (1100, 1200)}
    assert device.get_locked_clocks() == ((900, 1800), (1100, 1200))
    device.reset_gpu_locked_clocks()
    assert gpu.clk_range["GFX"] == (500, 2100)
    assert device.get_locked_clocks() == (None, (1100, 1200))
    device.set_gpu_locked_clocks(600, 700)
    device.reset_locked_clocks()
    assert gpu.clk_range == {"GFX": (500, 2100), "MEM": (900, 1300)}


def test_out_of_range_lock_is_invalid_argument() -> None:
    """A clock range amdsmi refuses is INVALID_ARGUMENT, the amdsmi status in the message."""
    backend, _ = _open()
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].set_gpu_locked_clocks(100, 1800)
    assert info.value.nvml_error == "NVML_ERROR_INVALID_ARGUMENT"
    assert "AMDSMI_STATUS_INVAL" in info.value.message


def test_reset_locked_clocks_tries_both_and_reports_both() -> None:
    """One failing reset does not skip the other; both failures are in the message."""
    backend, sim = _open()
    device, gpu = backend.devices[0], sim.devices[0]
    device.set_mem_locked_clocks(1100, 1200)
    gpu.faults["reset_gpu_locked_clocks"] = "AMDSMI_STATUS_NO_PERM"
    with pytest.raises(NvmlCallError) as info:
        device.reset_locked_clocks()
    assert info.value.nvml_error == "NVML_ERROR_NO_PERMISSION"
    assert info.value.message.startswith("graphics clocks:")
    assert gpu.clk_range["MEM"] == (900, 1300)


@pytest.mark.parametrize("method", ["get_persistence_mode", "set_persistence_mode"])
def test_persistence_mode_is_not_supported(method: str) -> None:
    """AMD GPUs have no persistence mode: NOT_SUPPORTED, with a message saying so."""
    backend, _ = _open()
    call = getattr(backend.devices[0], method)
    with pytest.raises(NvmlCallError) as info:
        call(True) if method.startswith("set") else call()
    assert info.value.nvml_error == "NVML_ERROR_NOT_SUPPORTED"
    assert "AMD" in info.value.message


def test_faults_apply_after_arming_only() -> None:
    """Start-up succeeds with faulted calls; once armed the call fails with that status."""
    spec = SimGpuSpec(faults={"get_power_limit_constraints": "AMDSMI_STATUS_BUSY"})
    backend, _ = _open(spec)
    assert backend.infos[0].min_power_limit_mw == 200_000
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].get_power_limit_constraints()
    assert info.value.nvml_error == "NVML_ERROR_IN_USE"
    assert info.value.message == "AMDSMI_STATUS_BUSY - Device busy"


@pytest.mark.parametrize("name", sorted(n for n in STATUS if n != "AMDSMI_STATUS_SUCCESS"))
def test_every_status_translates_to_a_real_nvml_name(name: str) -> None:
    """Each amdsmi status becomes an NVML error name pynvml knows, its own name in the message."""
    error = translate(AmdSmiLibraryException(STATUS[name][0]))
    assert error.nvml_error in ERROR_CODES
    assert error.message.startswith(name)


def test_key_statuses_keep_their_meaning() -> None:
    """Permission, support, argument and timeout failures keep their meaning across vendors."""
    code = {name: value for name, (value, _) in STATUS.items()}
    assert nvml_name(code["AMDSMI_STATUS_NO_PERM"]) == "NVML_ERROR_NO_PERMISSION"
    assert nvml_name(code["AMDSMI_STATUS_NOT_SUPPORTED"]) == "NVML_ERROR_NOT_SUPPORTED"
    assert nvml_name(code["AMDSMI_STATUS_INVAL"]) == "NVML_ERROR_INVALID_ARGUMENT"
    assert nvml_name(code["AMDSMI_STATUS_TIMEOUT"]) == "NVML_ERROR_TIMEOUT"
    assert nvml_name(12345) == "NVML_ERROR_UNKNOWN"
    assert ERROR_CODES["NVML_ERROR_NO_PERMISSION"] == pynvml.NVML_ERROR_NO_PERMISSION


def test_unknown_code_still_translates() -> None:
    """A status this zeusd does not know is UNKNOWN, with its number kept in the message."""
    error = translate(AmdSmiLibraryException(777))
    assert error.nvml_error == "NVML_ERROR_UNKNOWN"
    assert "AMDSMI_STATUS_777" in error.message


def test_init_failure_is_a_translated_error() -> None:
    """amdsmi failing to initialise surfaces as an NvmlCallError, not a raw exception."""
    sim = SimAmdsmi(default_sim_gpus(1, "amd"))

    def refuse(flag: object = None) -> None:
        raise AmdSmiLibraryException(STATUS["AMDSMI_STATUS_DRIVER_NOT_LOADED"][0])

    sim.amdsmi_init = refuse  # type: ignore[method-assign,assignment]
    with pytest.raises(NvmlCallError) as info:
        AmdsmiBackend.open(sim)
    assert info.value.nvml_error == "NVML_ERROR_DRIVER_NOT_LOADED"


def test_close_shuts_amdsmi_down() -> None:
    """close() ends the library session: further calls fail NOT_INIT, as amdsmi's do."""
    backend, _ = _open()
    backend.close()
    with pytest.raises(NvmlCallError) as info:
        backend.devices[0].get_power_limit()
    assert "AMDSMI_STATUS_NOT_INIT" in info.value.message
