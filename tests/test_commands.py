"""Command objects: every param is checked against every target GPU before anything runs."""

from __future__ import annotations

from typing import Any

import pytest

from zeusd.core import gpu_commands as cmd
from zeusd.core.errors import InvalidParamsError
from zeusd.core.omitted import OMITTED
from zeusd.gpu.backend import GpuInfo


def _gpu(index: int, low: int = 200_000, high: int = 700_000) -> GpuInfo:
    return GpuInfo(
        index=index,
        name="sim",
        uuid=f"GPU-{index}",
        pci_address=f"00000000:{index:02X}:00.0",
        cumulative_energy_available=True,
        min_power_limit_mw=low,
        max_power_limit_mw=high,
        default_power_limit_mw=high,
        memory_clocks_mhz=(2619, 1593),
    )


TABLE = cmd.GpuTable([_gpu(0), _gpu(1, 100_000, 300_000), _gpu(2)])


def _refused(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(InvalidParamsError) as info:
        fn(*args, **kwargs)
    data: dict[str, Any] = info.value.data
    assert info.value.code == -32602
    return data


@pytest.mark.parametrize(
    ("gpu_ids", "reason"),
    [
        ("0", "must be a list"),
        (0, "must be a list"),
        ({"0": 1}, "must be a list"),
        ([], "must not be empty"),
        ([True], "integer GPU ids"),
        ([0.0], "integer GPU ids"),
        (["0"], "integer GPU ids"),
        ([None], "integer GPU ids"),
        ([0, 0], "listed twice"),
        ([7], "unknown GPU 7"),
        ([-1], "unknown GPU -1"),
        ([2**32], "unknown GPU"),
    ],
)
def test_bad_gpu_ids_are_refused(gpu_ids: object, reason: str) -> None:
    """Each malformed gpu_ids value names the param and says what is wrong."""
    data = _refused(TABLE.resolve, gpu_ids)
    assert data["param"] == "gpu_ids"
    assert reason in data["reason"]


def test_omitted_gpu_ids_means_every_gpu() -> None:
    """An omitted gpu_ids (on a read) resolves to all GPUs in index order."""
    assert [g.index for g in TABLE.resolve(OMITTED)] == [0, 1, 2]


def test_null_gpu_ids_is_not_every_gpu() -> None:
    """An explicit null is a mistyped value, never a wildcard."""
    data = _refused(TABLE.resolve, None)
    assert data["reason"] == "'gpu_ids' must be a list of GPU ids (got null)"


def test_reasons_show_values_as_json() -> None:
    """Rejected values are shown as the client wrote them: true, null, "0"."""
    assert "(got true)" in _refused(TABLE.resolve, [True])["reason"]
    data = _refused(cmd.SetPowerLimit, TABLE.resolve([0]), power_limit_mw="300000")
    assert data["reason"] == "'power_limit_mw' must be an integer (got \"300000\")"


def test_gpu_ids_keep_request_order() -> None:
    """Targets come back in the order the client listed them."""
    assert [g.index for g in TABLE.resolve([2, 0])] == [2, 0]


def test_power_limit_checked_against_each_target() -> None:
    """A limit valid for GPU 0 but above GPU 1's maximum is refused with GPU 1's range."""
    data = _refused(cmd.SetPowerLimit, TABLE.resolve([0, 1]), power_limit_mw=400_000)
    assert data == {
        "param": "power_limit_mw",
        "reason": "'power_limit_mw' must be in [100000, 300000] for GPU 1 (got 400000)",
        "min": 100_000,
        "max": 300_000,
    }


def test_power_limit_wraparound_value_is_refused() -> None:
    """2**32 + 300000 would wrap to 300000 in ctypes; it must be refused, not passed on."""
    data = _refused(cmd.SetPowerLimit, TABLE.resolve([0]), power_limit_mw=2**32 + 300_000)
    assert data["max"] == 700_000


@pytest.mark.parametrize("value", [True, 300000.0, "300000", None, [300000]])
def test_power_limit_must_be_an_integer(value: object) -> None:
    """Booleans, floats (even integral ones), strings and null are not integers."""
    data = _refused(cmd.SetPowerLimit, TABLE.resolve([0]), power_limit_mw=value)
    assert "must be an integer" in data["reason"]


def test_valid_power_limit_builds_command() -> None:
    """A limit inside every target's range is accepted as is."""
    command = cmd.SetPowerLimit(TABLE.resolve([0, 2]), power_limit_mw=250_000)
    assert command.power_limit_mw == 250_000
    assert command.result({0: None, 2: None}) == {"applied": [0, 2]}


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_enabled_must_be_boolean(value: object) -> None:
    """Persistence mode takes true/false only; 1 and 0 are refused."""
    data = _refused(cmd.SetPersistenceMode, TABLE.resolve([0]), enabled=value)
    assert data["param"] == "enabled"


@pytest.mark.parametrize(
    ("low", "high", "param"),
    [
        (0, 1000, "min_clock_mhz"),
        (1000, 0, "max_clock_mhz"),
        (2**32, 2**32, "min_clock_mhz"),
        (1000, 2**32, "max_clock_mhz"),
        (-5, 1000, "min_clock_mhz"),
        (1500, 1000, "max_clock_mhz"),
        (1000.0, 1500, "min_clock_mhz"),
        (1000, False, "max_clock_mhz"),
    ],
)
def test_clock_ranges_are_checked(low: object, high: object, param: str) -> None:
    """Clocks must be integers in [1, 2**32-1] with min <= max."""
    for command in (cmd.SetGpuLockedClocks, cmd.SetMemLockedClocks):
        data = _refused(command, TABLE.resolve([0]), min_clock_mhz=low, max_clock_mhz=high)
        assert data["param"] == param


def test_min_above_max_reports_range() -> None:
    """The min > max error carries the allowed range for max."""
    data = _refused(
        cmd.SetGpuLockedClocks, TABLE.resolve([0]), min_clock_mhz=1500, max_clock_mhz=900
    )
    assert data["min"] == 1500
    assert "(got 1500 > 900)" in data["reason"]


def test_equal_min_and_max_clocks_are_allowed() -> None:
    """Locking to one exact clock is legitimate."""
    command = cmd.SetGpuLockedClocks(TABLE.resolve([0]), min_clock_mhz=1410, max_clock_mhz=1410)
    assert (command.min_clock_mhz, command.max_clock_mhz) == (1410, 1410)


def test_unsupported_memory_clock_is_refused() -> None:
    """A memory clock not in the GPU's list is refused before NVML is asked."""
    data = _refused(cmd.GetSupportedGraphicsClocks, TABLE.resolve([0]), memory_clock_mhz=1234)
    assert data["param"] == "memory_clock_mhz"
    assert "2619" in data["reason"]


def test_read_results_are_keyed_by_string_id() -> None:
    """Per-GPU results use the GPU id as a JSON string key."""
    command = cmd.GetPowerLimit(TABLE.resolve([1, 0]))
    assert command.result({1: {"power_limit_mw": 5}, 0: {"power_limit_mw": 6}}) == {
        "1": {"power_limit_mw": 5},
        "0": {"power_limit_mw": 6},
    }


def test_commands_are_frozen() -> None:
    """A validated command cannot be altered afterwards."""
    command = cmd.SetPowerLimit(TABLE.resolve([0]), power_limit_mw=250_000)
    with pytest.raises(AttributeError):
        command.power_limit_mw = 5  # type: ignore[misc]


def test_gpu_without_known_limits_only_gets_the_uint32_check() -> None:
    """With no constraints known, the limit must still fit NVML's 32-bit argument."""
    unknown = GpuInfo(
        index=9,
        name="x",
        uuid="GPU-9",
        pci_address="0",
        cumulative_energy_available=False,
        min_power_limit_mw=None,
        max_power_limit_mw=None,
        default_power_limit_mw=None,
        memory_clocks_mhz=None,
    )
    assert cmd.SetPowerLimit((unknown,), power_limit_mw=123).power_limit_mw == 123
    data = _refused(cmd.SetPowerLimit, (unknown,), power_limit_mw=2**32)
    assert (data["min"], data["max"]) == (1, 2**32 - 1)
