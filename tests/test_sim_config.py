"""Tests for the simulated GPU specs and the TOML sim config."""

from __future__ import annotations

import itertools
from pathlib import Path

import pynvml
import pytest

from zeusd.sim.config import (
    FAULT_FUNCTIONS,
    SimConfigError,
    SimGpuSpec,
    default_sim_gpus,
    load_sim_config,
    parse_sim_config,
)

FULL_TOML = """
[[gpu]]
name = "NVIDIA A100-SXM4-40GB"
min_power_limit_mw = 100000
max_power_limit_mw = 400000
default_power_limit_mw = 300000
energy_counter = false
latency_ms = 2.5
[gpu.faults]
set_persistence_mode = "NVML_ERROR_NO_PERMISSION"
reset_locked_clocks = "NVML_ERROR_TIMEOUT"

[[gpu]]
latency_ms = 3
"""


def test_spec_defaults_describe_an_h100() -> None:
    """A default spec is an H100 with a 200-700 W range and NVML's descending clock list."""
    spec = SimGpuSpec()
    assert spec.name == "NVIDIA H100 80GB HBM3"
    assert (spec.min_power_limit_mw, spec.default_power_limit_mw, spec.max_power_limit_mw) == (
        200_000,
        700_000,
        700_000,
    )
    assert spec.energy_counter is True
    assert spec.latency_ms == 0
    assert dict(spec.faults) == {}
    assert spec.memory_clocks_mhz == (2619,)
    clocks = spec.graphics_clocks_mhz
    assert (clocks[0], clocks[-1], len(clocks)) == (1980, 210, 119)
    assert all(a - b == 15 for a, b in itertools.pairwise(clocks))


def test_spec_is_hashable_and_its_faults_read_only() -> None:
    """Specs hash and compare by value; their faults cannot be changed afterwards."""
    source = {"get_power": "NVML_ERROR_UNKNOWN"}
    spec = SimGpuSpec(faults=source)
    source["get_power_limit"] = "NVML_ERROR_UNKNOWN"
    assert dict(spec.faults) == {"get_power": "NVML_ERROR_UNKNOWN"}
    with pytest.raises(TypeError):
        spec.faults["get_power_limit"] = "NVML_ERROR_UNKNOWN"  # type: ignore[index]
    twin = SimGpuSpec(faults={"get_power": "NVML_ERROR_UNKNOWN"})
    assert spec == twin
    assert hash(spec) == hash(twin)
    assert spec != SimGpuSpec()


def test_default_sim_gpus_gives_count_default_specs() -> None:
    """default_sim_gpus returns that many default specs."""
    assert default_sim_gpus(3) == [SimGpuSpec()] * 3


@pytest.mark.parametrize("count", [0, -1])
def test_default_sim_gpus_rejects_fewer_than_one(count: int) -> None:
    """Fewer than one simulated GPU is a ValueError."""
    with pytest.raises(ValueError, match="at least one"):
        default_sim_gpus(count)


def test_parse_reads_every_key() -> None:
    """Every documented key is read; omitted keys keep their defaults."""
    first, second = parse_sim_config(FULL_TOML)
    assert first == SimGpuSpec(
        name="NVIDIA A100-SXM4-40GB",
        min_power_limit_mw=100_000,
        max_power_limit_mw=400_000,
        default_power_limit_mw=300_000,
        energy_counter=False,
        latency_ms=2.5,
        faults={
            "set_persistence_mode": "NVML_ERROR_NO_PERMISSION",
            "reset_locked_clocks": "NVML_ERROR_TIMEOUT",
        },
    )
    assert second == SimGpuSpec(latency_ms=3)


def test_load_reads_a_file(tmp_path: Path) -> None:
    """load_sim_config accepts a path and parses the file."""
    path = tmp_path / "sim.toml"
    path.write_text(FULL_TOML)
    assert load_sim_config(path) == parse_sim_config(FULL_TOML)
    assert load_sim_config(str(path)) == parse_sim_config(FULL_TOML)


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a SimConfigError that names it."""
    path = tmp_path / "missing.toml"
    with pytest.raises(SimConfigError, match=r"missing\.toml: cannot read file"):
        load_sim_config(path)


def test_load_reports_invalid_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a SimConfigError, not a UnicodeDecodeError."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[[gpu]]\nname = "\xff"\n')
    with pytest.raises(SimConfigError, match="not valid UTF-8"):
        load_sim_config(path)


def test_error_message_names_file_table_and_key(tmp_path: Path) -> None:
    """The message says which file, which [[gpu]] table (1-based) and which key."""
    path = tmp_path / "x.toml"
    path.write_text("[[gpu]]\n[[gpu]]\nmin_power_limit_mw = 800000\n")
    with pytest.raises(SimConfigError) as info:
        load_sim_config(path)
    assert str(info.value) == (
        f"sim config {path}, [[gpu]] #2: 'min_power_limit_mw' must be <= "
        "'default_power_limit_mw' (got 800000 > 700000)"
    )


def gpu(body: str) -> str:
    """Return a config of one [[gpu]] table holding *body*."""
    return f"[[gpu]]\n{body}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[[gpu]\n", "TOML syntax error", id="syntax"),
        pytest.param("", "no [[gpu]] table", id="empty"),
        pytest.param("gpu = []\n", "no [[gpu]] table", id="empty-array"),
        pytest.param("gpus = 1\n" + gpu(""), "unknown top-level key(s) 'gpus'", id="top-key"),
        pytest.param('[gpu]\nname = "x"\n', "array of tables", id="table-not-array"),
        pytest.param("gpu = [1, 2]\n", "array of tables", id="array-of-ints"),
        pytest.param(
            gpu("memory_clocks_mhz = [1]"), "#1: unknown key 'memory_clocks_mhz'", id="clocks"
        ),
        pytest.param(gpu("power = 1"), "#1: unknown key 'power'", id="unknown-key"),
        pytest.param(gpu('name = ""'), "'name' must be a non-empty string", id="name-empty"),
        pytest.param(gpu("name = 3"), "'name' must be a non-empty string", id="name-int"),
        pytest.param(
            gpu("min_power_limit_mw = true"),
            "'min_power_limit_mw' must be an integer in mW (got True)",
            id="limit-bool",
        ),
        pytest.param(
            gpu("max_power_limit_mw = 700000.0"),
            "'max_power_limit_mw' must be an integer",
            id="limit-float",
        ),
        pytest.param(
            gpu('default_power_limit_mw = "700000"'),
            "'default_power_limit_mw' must be an integer",
            id="limit-str",
        ),
        pytest.param(
            gpu("min_power_limit_mw = 0"),
            "'min_power_limit_mw' must be between 1 and 4294967295 mW (got 0)",
            id="limit-zero",
        ),
        pytest.param(
            gpu("min_power_limit_mw = -5"), "must be between 1 and 4294967295", id="limit-neg"
        ),
        pytest.param(
            gpu("max_power_limit_mw = 4294967296"),
            "'max_power_limit_mw' must be between 1 and 4294967295 mW (got 4294967296)",
            id="limit-over-32-bits",
        ),
        pytest.param(
            gpu("max_power_limit_mw = 300000"),
            "'default_power_limit_mw' must be <= 'max_power_limit_mw' (got 700000 > 300000)",
            id="default-over-max",
        ),
        pytest.param(
            gpu("min_power_limit_mw = 500000\ndefault_power_limit_mw = 400000"),
            "'min_power_limit_mw' must be <= 'default_power_limit_mw' (got 500000 > 400000)",
            id="min-over-default",
        ),
        pytest.param(
            gpu("energy_counter = 1"), "'energy_counter' must be true or false", id="energy-int"
        ),
        pytest.param(gpu("latency_ms = -1"), "'latency_ms' must be finite and >= 0", id="lat-neg"),
        pytest.param(gpu("latency_ms = inf"), "must be finite and >= 0 (got inf)", id="lat-inf"),
        pytest.param(gpu("latency_ms = nan"), "must be finite and >= 0 (got nan)", id="lat-nan"),
        pytest.param(gpu("latency_ms = true"), "'latency_ms' must be a number", id="lat-bool"),
        pytest.param(gpu('latency_ms = "5"'), "'latency_ms' must be a number", id="lat-str"),
        pytest.param(gpu('faults = "x"'), "'faults' must be a table", id="faults-str"),
        pytest.param(
            gpu('[gpu.faults]\nget_temperature = "NVML_ERROR_UNKNOWN"'),
            "unknown fault key 'faults.get_temperature'",
            id="fault-key",
        ),
        pytest.param(
            gpu('[gpu.faults]\n"gpu.get_power" = "NVML_ERROR_UNKNOWN"'),
            "unknown fault key 'faults.gpu.get_power'",
            id="fault-key-with-prefix",
        ),
        pytest.param(
            gpu('[gpu.faults]\nget_power = "NVML_ERROR_BOGUS"'),
            "'faults.get_power' must name an NVML error such as 'NVML_ERROR_NO_PERMISSION' "
            "(got 'NVML_ERROR_BOGUS')",
            id="fault-name",
        ),
        pytest.param(gpu("[gpu.faults]\nget_power = 4"), "(got 4)", id="fault-code-not-name"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    """Each invalid config is a SimConfigError that names the source and explains why."""
    with pytest.raises(SimConfigError) as info:
        parse_sim_config(text, "cfg.toml")
    assert str(info.value).startswith("sim config cfg.toml")
    assert message in str(info.value)


def test_fault_functions_cover_the_gpu_methods() -> None:
    """Every fault key maps to NVML functions that pynvml really has."""
    assert set(FAULT_FUNCTIONS) == {
        "get_power_limit",
        "get_power_limit_constraints",
        "get_persistence_mode",
        "get_power",
        "get_cumulative_energy",
        "get_supported_memory_clocks",
        "get_supported_graphics_clocks",
        "set_power_limit",
        "reset_power_limit",
        "set_persistence_mode",
        "set_gpu_locked_clocks",
        "reset_gpu_locked_clocks",
        "set_mem_locked_clocks",
        "reset_mem_locked_clocks",
        "reset_locked_clocks",
    }
    assert FAULT_FUNCTIONS["reset_locked_clocks"] == (
        "nvmlDeviceResetGpuLockedClocks",
        "nvmlDeviceResetMemoryLockedClocks",
    )
    for functions in FAULT_FUNCTIONS.values():
        assert functions
        assert all(callable(getattr(pynvml, f, None)) for f in functions)
