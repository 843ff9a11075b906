"""The simulated amdsmi keeps amdsmi's call surface: names, argument order, types, codes."""

from __future__ import annotations

import inspect

import pytest

from zeusd.gpu.amdsmi_api import AmdsmiApi
from zeusd.gpu.amdsmi_errors import STATUS
from zeusd.sim import SimAmdsmi, default_sim_gpus, parse_sim_config
from zeusd.sim.amdsmi import (
    AmdSmiLibraryException,
    AmdSmiParameterException,
    AmdSmiTimeoutException,
)
from zeusd.sim.config import SimConfigError


def _sim() -> SimAmdsmi:
    sim = SimAmdsmi(default_sim_gpus(2, "amd"))
    sim.amdsmi_init(sim.AmdSmiInitFlags.INIT_AMD_GPUS)
    sim.arm()
    return sim


def test_every_protocol_function_exists_with_amdsmis_parameter_names() -> None:
    """Each function zeusd calls exists on the sim with amdsmi's parameter names and order."""
    for name, member in inspect.getmembers(AmdsmiApi, inspect.isfunction):
        if not name.startswith("amdsmi_"):
            continue
        wanted = list(inspect.signature(member).parameters)[1:]
        got = list(inspect.signature(getattr(SimAmdsmi, name)).parameters)[1:]
        assert got == wanted, name


def test_calls_before_init_fail_not_init() -> None:
    """Like amdsmi, nothing works before amdsmi_init: AMDSMI_STATUS_NOT_INIT (32)."""
    sim = SimAmdsmi(default_sim_gpus(1, "amd"))
    with pytest.raises(AmdSmiLibraryException) as info:
        sim.amdsmi_get_processor_handles()
    assert info.value.get_error_code() == 32
    assert info.value.get_error_info() == "AMDSMI_STATUS_NOT_INIT - Not initialized"


def test_wrong_argument_types_raise_parameter_exceptions() -> None:
    """amdsmi checks types before the C call: a handle, an int cap, an AmdSmiClkType."""
    sim = _sim()
    gpu = sim.amdsmi_get_processor_handles()[0]
    with pytest.raises(AmdSmiParameterException):
        sim.amdsmi_get_power_cap_info(0)
    with pytest.raises(AmdSmiParameterException):
        sim.amdsmi_set_power_cap(gpu, 0, 300.5)  # type: ignore[arg-type]
    with pytest.raises(AmdSmiParameterException):
        sim.amdsmi_get_clk_freq(gpu, 4)
    with pytest.raises(AmdSmiParameterException):
        sim.amdsmi_init(2)


def test_set_gpu_clk_range_takes_min_max_then_type() -> None:
    """amdsmi_set_gpu_clk_range(handle, min, max, clk_type), as in amdsmi 7."""
    sim = _sim()
    gpu = sim.amdsmi_get_processor_handles()[1]
    sim.amdsmi_set_gpu_clk_range(gpu, 1000, 2000, sim.AmdSmiClkType.GFX)
    assert gpu.clk_range["GFX"] == (1000, 2000)
    with pytest.raises(AmdSmiLibraryException) as info:
        sim.amdsmi_set_gpu_clk_range(gpu, 2000, 1000, sim.AmdSmiClkType.GFX)
    assert info.value.get_error_code() == STATUS["AMDSMI_STATUS_INVAL"][0]


def test_power_cap_info_has_amdsmis_keys_in_microwatts() -> None:
    """The dict has amdsmi's five keys; caps are µW."""
    sim = _sim()
    info = sim.amdsmi_get_power_cap_info(sim.devices[0])
    assert set(info) == {
        "power_cap",
        "default_power_cap",
        "dpm_cap",
        "min_power_cap",
        "max_power_cap",
    }
    assert info["max_power_cap"] == 750_000_000


def test_timeout_status_raises_amdsmis_subclass() -> None:
    """AMDSMI_STATUS_TIMEOUT raises AmdSmiTimeoutException, still a library exception."""
    sim = _sim()
    sim.devices[0].faults["get_power"] = "AMDSMI_STATUS_TIMEOUT"
    with pytest.raises(AmdSmiTimeoutException) as info:
        sim.amdsmi_get_power_info(sim.devices[0])
    assert isinstance(info.value, AmdSmiLibraryException)
    assert info.value.err_code == 8


def test_sim_config_for_amd_takes_amdsmi_status_names() -> None:
    """With vendor amd, faults name amdsmi statuses and the defaults are an MI300X's."""
    (spec,) = parse_sim_config(
        "[[gpu]]\nmax_power_limit_mw = 600000\ndefault_power_limit_mw = 600000\n"
        '[gpu.faults]\nget_power = "AMDSMI_STATUS_BUSY"\n',
        vendor="amd",
    )
    assert spec.name == "AMD Instinct MI300X"
    assert spec.max_power_limit_mw == 600_000
    assert dict(spec.faults) == {"get_power": "AMDSMI_STATUS_BUSY"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('get_power = "NVML_ERROR_NO_PERMISSION"', "AMDSMI_STATUS_NO_PERM"),
        ('set_persistence_mode = "AMDSMI_STATUS_BUSY"', "unknown fault key"),
    ],
)
def test_sim_config_for_amd_refuses_nvml_faults(body: str, message: str) -> None:
    """NVML error names, and persistence-mode keys, are refused for simulated AMD GPUs."""
    with pytest.raises(SimConfigError, match=message):
        parse_sim_config(f"[[gpu]]\n[gpu.faults]\n{body}\n", vendor="amd")
