"""Simulated GPU specs and the TOML file (``--sim-config``) that describes them."""

from __future__ import annotations

import itertools
import math
import os
import tomllib
import types
from collections.abc import Mapping
from typing import Any

import attrs

from zeusd.gpu.amdsmi_errors import STATUS
from zeusd.gpu.nvml_errors import ERROR_CODES

#: Fault key (a JSON-RPC method without ``gpu.``) -> the NVML functions it makes fail.
FAULT_FUNCTIONS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "get_power_limit": ("nvmlDeviceGetPowerManagementLimit",),
        "get_power_limit_constraints": ("nvmlDeviceGetPowerManagementLimitConstraints",),
        "get_persistence_mode": ("nvmlDeviceGetPersistenceMode",),
        "get_power": ("nvmlDeviceGetPowerUsage",),
        "get_cumulative_energy": ("nvmlDeviceGetTotalEnergyConsumption",),
        "get_supported_memory_clocks": ("nvmlDeviceGetSupportedMemoryClocks",),
        "get_supported_graphics_clocks": ("nvmlDeviceGetSupportedGraphicsClocks",),
        "set_power_limit": ("nvmlDeviceSetPowerManagementLimit",),
        "reset_power_limit": ("nvmlDeviceGetPowerManagementDefaultLimit",),
        "set_persistence_mode": ("nvmlDeviceSetPersistenceMode",),
        "set_gpu_locked_clocks": ("nvmlDeviceSetGpuLockedClocks",),
        "reset_gpu_locked_clocks": ("nvmlDeviceResetGpuLockedClocks",),
        "set_mem_locked_clocks": ("nvmlDeviceSetMemoryLockedClocks",),
        "reset_mem_locked_clocks": ("nvmlDeviceResetMemoryLockedClocks",),
        "reset_locked_clocks": (
            "nvmlDeviceResetGpuLockedClocks",
            "nvmlDeviceResetMemoryLockedClocks",
        ),
    }
)

#: The same for the simulated amdsmi (``--sim-vendor amd``): the amdsmi functions, with the
#: clock type where one function serves both. A fault fails the function, so every method
#: that calls it (reset_power_limit reads the default cap through amdsmi_get_power_cap_info).
AMD_FAULT_FUNCTIONS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "get_power_limit": ("amdsmi_get_power_cap_info",),
        "get_power_limit_constraints": ("amdsmi_get_power_cap_info",),
        "get_power": ("amdsmi_get_power_info",),
        "get_cumulative_energy": ("amdsmi_get_energy_count",),
        "get_supported_memory_clocks": ("amdsmi_get_clk_freq/MEM",),
        "get_supported_graphics_clocks": ("amdsmi_get_clk_freq/GFX",),
        "set_power_limit": ("amdsmi_set_power_cap",),
        "reset_power_limit": ("amdsmi_set_power_cap",),
        "set_gpu_locked_clocks": ("amdsmi_set_gpu_clk_range/GFX",),
        "reset_gpu_locked_clocks": ("amdsmi_set_gpu_clk_range/GFX",),
        "set_mem_locked_clocks": ("amdsmi_set_gpu_clk_range/MEM",),
        "reset_mem_locked_clocks": ("amdsmi_set_gpu_clk_range/MEM",),
        "reset_locked_clocks": ("amdsmi_set_gpu_clk_range/GFX", "amdsmi_set_gpu_clk_range/MEM"),
    }
)

#: ``--sim-vendor`` values.
VENDORS = ("nvidia", "amd")

_UINT32_MAX = 2**32 - 1
_LIMIT_KEYS = ("min_power_limit_mw", "default_power_limit_mw", "max_power_limit_mw")
_TOML_KEYS = ("name", *_LIMIT_KEYS, "energy_counter", "latency_ms", "faults")


def _freeze(faults: Mapping[str, str]) -> Mapping[str, str]:
    # A read-only copy, so a frozen spec cannot be changed through the caller's dict.
    return types.MappingProxyType(dict(faults))


@attrs.frozen(kw_only=True)
class SimGpuSpec:
    """What one simulated GPU reports; defaults describe an H100 SXM."""

    name: str = "NVIDIA H100 80GB HBM3"
    min_power_limit_mw: int = 200_000
    max_power_limit_mw: int = 700_000
    default_power_limit_mw: int = 700_000
    #: False: nvmlDeviceGetTotalEnergyConsumption fails NOT_SUPPORTED (a capability, not a fault).
    energy_counter: bool = True
    #: Added to every NVML call on this GPU once the sim is armed.
    latency_ms: float = 0
    #: Fault key (see FAULT_FUNCTIONS) -> ``NVML_ERROR_*`` name; applies once armed.
    # A mapping proxy is unhashable, so it is left out of the hash (it still counts for ==).
    faults: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze, hash=False)
    memory_clocks_mhz: tuple[int, ...] = (2619,)
    # Descending, as NVML lists them.
    graphics_clocks_mhz: tuple[int, ...] = tuple(range(1980, 209, -15))


#: What a simulated AMD GPU reports unless its [[gpu]] table says otherwise: an MI300X.
AMD_DEFAULT = SimGpuSpec(
    name="AMD Instinct MI300X",
    min_power_limit_mw=200_000,
    max_power_limit_mw=750_000,
    default_power_limit_mw=750_000,
    memory_clocks_mhz=(1300, 1200, 1100, 900),
    graphics_clocks_mhz=(2100, 1300, 500),
)


def fault_tables(vendor: str) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, object]]:
    """The fault keys of *vendor*'s simulated library, and the error names it can fail with."""
    if vendor == "amd":
        return AMD_FAULT_FUNCTIONS, {n: c for n, (c, _) in STATUS.items() if c != 0}
    return FAULT_FUNCTIONS, ERROR_CODES


class SimConfigError(Exception):
    """The sim config file is unreadable or invalid; the message says where and why."""


def _base(vendor: str) -> SimGpuSpec:
    return AMD_DEFAULT if vendor == "amd" else SimGpuSpec()


def default_sim_gpus(count: int, vendor: str = "nvidia") -> list[SimGpuSpec]:
    """Return *count* default GPUs of *vendor* (used when no sim config file is given)."""
    if count < 1:
        raise ValueError(f"need at least one simulated GPU, got {count}")
    return [_base(vendor) for _ in range(count)]


def load_sim_config(path: str | os.PathLike[str], vendor: str = "nvidia") -> list[SimGpuSpec]:
    """Read and validate the TOML sim config at *path*."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise SimConfigError(f"sim config {source}: cannot read file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SimConfigError(f"sim config {source}: not valid UTF-8: {e}") from e
    return parse_sim_config(text, source, vendor)


def parse_sim_config(
    text: str, source: str = "<string>", vendor: str = "nvidia"
) -> list[SimGpuSpec]:
    """Validate TOML *text* describing GPUs of *vendor*; *source* names it in errors."""
    where = f"sim config {source}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SimConfigError(f"{where}: TOML syntax error: {e}") from e
    extra = sorted(set(doc) - {"gpu"})
    if extra:
        raise SimConfigError(
            f"{where}: unknown top-level key(s) {', '.join(map(repr, extra))}; "
            "only [[gpu]] tables are allowed"
        )
    tables = doc.get("gpu")
    if tables is None or tables == []:
        raise SimConfigError(f"{where}: no [[gpu]] table; describe at least one GPU")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SimConfigError(f"{where}: 'gpu' must be an array of tables, written [[gpu]]")
    return [_parse_gpu(t, f"{where}, [[gpu]] #{i}", vendor) for i, t in enumerate(tables, 1)]


def _parse_gpu(table: dict[str, Any], where: str, vendor: str) -> SimGpuSpec:
    for key in table:
        if key not in _TOML_KEYS:
            raise SimConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(_TOML_KEYS)})")
    kwargs: dict[str, Any] = {}
    if "name" in table:
        name = table["name"]
        if not isinstance(name, str) or not name:
            raise SimConfigError(f"{where}: 'name' must be a non-empty string (got {name!r})")
        kwargs["name"] = name
    for key in _LIMIT_KEYS:
        if key in table:
            kwargs[key] = _limit(table[key], key, where)
    if "energy_counter" in table:
        value = table["energy_counter"]
        if not isinstance(value, bool):
            raise SimConfigError(f"{where}: 'energy_counter' must be true or false (got {value!r})")
        kwargs["energy_counter"] = value
    if "latency_ms" in table:
        kwargs["latency_ms"] = _latency(table["latency_ms"], where)
    if "faults" in table:
        kwargs["faults"] = _faults(table["faults"], where, vendor)
    spec = attrs.evolve(_base(vendor), **kwargs)
    # Checked on the final spec so a key left at its default takes part too.
    limits = [(key, getattr(spec, key)) for key in _LIMIT_KEYS]
    for (low_key, low), (high_key, high) in itertools.pairwise(limits):
        if low > high:
            raise SimConfigError(
                f"{where}: {low_key!r} must be <= {high_key!r} (got {low} > {high})"
            )
    return spec


def _limit(value: object, key: str, where: str) -> int:
    # bool is an int subclass, but `true` as a power limit is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimConfigError(f"{where}: {key!r} must be an integer in mW (got {value!r})")
    if not 0 < value <= _UINT32_MAX:
        raise SimConfigError(
            f"{where}: {key!r} must be between 1 and {_UINT32_MAX} mW (got {value})"
        )
    return value


def _latency(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimConfigError(f"{where}: 'latency_ms' must be a number (got {value!r})")
    # TOML allows inf and nan; neither is a usable delay.
    if not math.isfinite(value) or value < 0:
        raise SimConfigError(f"{where}: 'latency_ms' must be finite and >= 0 (got {value!r})")
    return value


def _faults(value: object, where: str, vendor: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SimConfigError(f"{where}: 'faults' must be a table, written [gpu.faults]")
    functions, errors = fault_tables(vendor)
    example = "AMDSMI_STATUS_NO_PERM" if vendor == "amd" else "NVML_ERROR_NO_PERMISSION"
    library = "amdsmi status" if vendor == "amd" else "NVML error"
    for key, error in value.items():
        if key not in functions:
            raise SimConfigError(
                f"{where}: unknown fault key 'faults.{key}' (known: {', '.join(sorted(functions))})"
            )
        if not isinstance(error, str) or error not in errors:
            raise SimConfigError(
                f"{where}: 'faults.{key}' must name an {library} such as "
                f"'{example}' (got {error!r})"
            )
    return dict(value)
