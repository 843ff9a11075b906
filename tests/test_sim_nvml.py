"""Tests for SimNvml: it must behave like the pynvml module for every function zeusd uses."""

from __future__ import annotations

import ctypes
import inspect
import re
import threading
import time
from typing import Any

import pynvml
import pytest

from zeusd.gpu.nvml_errors import ERROR_CODES
from zeusd.sim.config import FAULT_FUNCTIONS, SimConfigError, SimGpuSpec, default_sim_gpus
from zeusd.sim.nvml import SimDevice, SimNvml

H100 = SimGpuSpec()


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def started(*specs: SimGpuSpec, clock: FakeClock | None = None) -> SimNvml:
    """Return an initialized SimNvml over *specs* (one default H100 if none)."""
    nvml = SimNvml(specs or [H100], clock=clock or FakeClock())
    nvml.nvmlInit()
    return nvml


def handle_calls(handle: object) -> dict[str, tuple[Any, ...]]:
    """Valid positional arguments for every handle-taking function on a default H100."""
    return {
        "nvmlDeviceGetName": (handle,),
        "nvmlDeviceGetUUID": (handle,),
        "nvmlDeviceGetPciInfo": (handle,),
        "nvmlDeviceGetPowerManagementLimit": (handle,),
        "nvmlDeviceGetPowerManagementLimitConstraints": (handle,),
        "nvmlDeviceGetPowerManagementDefaultLimit": (handle,),
        "nvmlDeviceSetPowerManagementLimit": (handle, 300_000),
        "nvmlDeviceGetPersistenceMode": (handle,),
        "nvmlDeviceSetPersistenceMode": (handle, 1),
        "nvmlDeviceGetPowerUsage": (handle,),
        "nvmlDeviceGetTotalEnergyConsumption": (handle,),
        "nvmlDeviceGetSupportedMemoryClocks": (handle,),
        "nvmlDeviceGetSupportedGraphicsClocks": (handle, 2619),
        "nvmlDeviceSetGpuLockedClocks": (handle, 900, 1500),
        "nvmlDeviceResetGpuLockedClocks": (handle,),
        "nvmlDeviceSetMemoryLockedClocks": (handle, 2619, 2619),
        "nvmlDeviceResetMemoryLockedClocks": (handle,),
    }


def raises_code(code: int) -> Any:
    """pytest.raises for the pynvml.NVMLError subclass of *code*."""
    return pytest.raises(pynvml.nvmlExceptionClass(code))


def test_sim_exposes_pynvml_error_class_and_constants() -> None:
    """NVMLError, its subclasses and the NVML_* constants are pynvml's own."""
    nvml = SimNvml([H100])
    assert nvml.NVMLError is pynvml.NVMLError
    for name, code in ERROR_CODES.items():
        assert getattr(nvml, name) == code
    assert getattr(nvml, "NVMLError_NoPermission") is pynvml.NVMLError_NoPermission  # noqa: B009
    assert getattr(nvml, "NVML_SUCCESS") == pynvml.NVML_SUCCESS  # noqa: B009
    assert getattr(nvml, "NVML_FEATURE_ENABLED") == pynvml.NVML_FEATURE_ENABLED  # noqa: B009


def test_every_pynvml_name_exists_with_the_same_positional_arguments() -> None:
    """Each sim function has its pynvml namesake's parameter names, in order."""
    nvml = SimNvml([H100])
    names = [*handle_calls(None), "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount"]
    for name in [*names, "nvmlDeviceGetHandleByIndex"]:
        sim_params = list(inspect.signature(getattr(nvml, name)).parameters)
        real_params = list(inspect.signature(getattr(pynvml, name)).parameters)
        assert sim_params == real_params, name


def test_every_function_needs_init() -> None:
    """Before nvmlInit and after the last nvmlShutdown, calls fail UNINITIALIZED."""
    nvml = SimNvml([H100])
    for call in (nvml.nvmlDeviceGetCount, nvml.nvmlShutdown):
        with raises_code(pynvml.NVML_ERROR_UNINITIALIZED):
            call()
    with raises_code(pynvml.NVML_ERROR_UNINITIALIZED):
        nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlShutdown()
    for name, args in handle_calls(handle).items():
        with raises_code(pynvml.NVML_ERROR_UNINITIALIZED) as info:
            getattr(nvml, name)(*args)
        assert info.value.value == pynvml.NVML_ERROR_UNINITIALIZED, name


def test_init_and_shutdown_are_counted() -> None:
    """Two inits need two shutdowns, and a third shutdown fails UNINITIALIZED."""
    nvml = SimNvml([H100, H100])
    nvml.nvmlInit()
    nvml.nvmlInit()
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 2
    nvml.nvmlShutdown()
    with raises_code(pynvml.NVML_ERROR_UNINITIALIZED):
        nvml.nvmlDeviceGetCount()
    with raises_code(pynvml.NVML_ERROR_UNINITIALIZED):
        nvml.nvmlShutdown()


def test_return_types_match_pynvml() -> None:
    """Ints are plain ints, lists hold ints, name and UUID are str, PCI info is pynvml's struct."""
    nvml = started()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert type(nvml.nvmlDeviceGetCount()) is int
    assert nvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert type(nvml.nvmlDeviceGetUUID(h)) is str
    for name in (
        "nvmlDeviceGetPowerManagementLimit",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceGetPersistenceMode",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption",
    ):
        assert type(getattr(nvml, name)(h)) is int, name
    for value in (
        nvml.nvmlDeviceGetPowerManagementLimitConstraints(h),
        nvml.nvmlDeviceGetSupportedMemoryClocks(h),
        nvml.nvmlDeviceGetSupportedGraphicsClocks(h, 2619),
    ):
        assert type(value) is list
        assert all(type(v) is int for v in value)
    for name in ("SetPowerManagementLimit", "SetPersistenceMode", "ResetGpuLockedClocks"):
        args = handle_calls(h)[f"nvmlDevice{name}"]
        assert getattr(nvml, f"nvmlDevice{name}")(*args) is None


def test_pci_info_is_a_real_pynvml_structure() -> None:
    """PCI info is pynvml.nvmlPciInfo_t; busId reads like pynvml's and holds the raw bytes."""
    nvml = started()
    info = nvml.nvmlDeviceGetPciInfo(nvml.nvmlDeviceGetHandleByIndex(0))
    assert type(info) is pynvml.nvmlPciInfo_t
    # pynvml's structures decode char arrays on attribute access; the C field holds bytes.
    reference = pynvml.nvmlPciInfo_t()
    reference.busId = b"00000000:18:00.0"
    assert type(info.busId) is type(reference.busId)
    assert info.busId == reference.busId
    assert ctypes.Structure.__getattribute__(info, "busId") == b"00000000:18:00.0"
    assert (info.domain, info.bus, info.device) == (0, 0x18, 0)


def test_ids_are_distinct_per_gpu_and_stable() -> None:
    """UUIDs and PCI bus ids differ between GPUs and repeat across instances."""
    first = started(*[H100] * 4)
    second = started(*[H100] * 4)
    uuids = [first.nvmlDeviceGetUUID(d) for d in first.devices]
    buses = [first.nvmlDeviceGetPciInfo(d).busId for d in first.devices]
    assert len(set(uuids)) == len(set(buses)) == 4
    assert uuids == [second.nvmlDeviceGetUUID(d) for d in second.devices]
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids)
    assert all(re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", b) for b in buses)


@pytest.mark.parametrize("index", [2, -1, 2**32 + 2])
def test_handle_index_out_of_range(index: int) -> None:
    """Indexes past the last GPU, wrapped or not, fail INVALID_ARGUMENT."""
    nvml = started(H100, H100)
    with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
        nvml.nvmlDeviceGetHandleByIndex(index)


def test_handle_index_wraps_like_c_uint() -> None:
    """An index of 2**32 + 1 reaches GPU 1, as it would through ctypes."""
    nvml = started(H100, H100)
    assert nvml.nvmlDeviceGetHandleByIndex(2**32 + 1) is nvml.devices[1]


def test_foreign_handles_are_invalid() -> None:
    """Handles from elsewhere (another sim, pynvml, junk) fail INVALID_ARGUMENT."""
    nvml = started()
    other = started()
    for handle in (other.devices[0], pynvml.c_nvmlDevice_t(), object(), 0):
        with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
            nvml.nvmlDeviceGetPowerManagementLimit(handle)


def test_non_integer_arguments_fail_like_ctypes() -> None:
    """A float power limit is a TypeError, as c_uint(1.5) is in pynvml."""
    nvml = started()
    with pytest.raises(TypeError):
        nvml.nvmlDeviceSetPowerManagementLimit(nvml.devices[0], 300_000.5)  # type: ignore[arg-type]


def test_power_limit_round_trip_and_range() -> None:
    """A limit in range is stored; out of range fails INVALID_ARGUMENT and changes nothing."""
    nvml = started()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [200_000, 700_000]
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 700_000
    nvml.nvmlDeviceSetPowerManagementLimit(h, 250_000)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 250_000
    for bad in (199_999, 700_001, -1):
        with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
            nvml.nvmlDeviceSetPowerManagementLimit(h, bad)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 250_000
    # Nothing resets the limit on its own; the default is just reported.
    assert nvml.nvmlDeviceGetPowerManagementDefaultLimit(h) == 700_000
    assert nvml.devices[0].power_limit_mw == 250_000


def test_power_limit_wraps_like_c_uint() -> None:
    """2**32 + 300000 W silently becomes 300000 mW: the sim reproduces the ctypes hazard."""
    nvml = started()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetPowerManagementLimit(h, 2**32 + 300_000)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == 300_000


def test_persistence_mode() -> None:
    """Persistence starts off, accepts 0 and 1 (after wrap), and rejects anything else."""
    nvml = started()
    h = nvml.devices[0]
    assert nvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_DISABLED
    nvml.nvmlDeviceSetPersistenceMode(h, pynvml.NVML_FEATURE_ENABLED)
    assert nvml.nvmlDeviceGetPersistenceMode(h) == 1
    nvml.nvmlDeviceSetPersistenceMode(h, 2**32)
    assert nvml.nvmlDeviceGetPersistenceMode(h) == 0
    with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
        nvml.nvmlDeviceSetPersistenceMode(h, 2)
    assert h.persistence_mode == 0


def test_gpu_locked_clocks_snap_to_the_grid() -> None:
    """Locked GPU clocks are clamped into range and snapped to the nearest supported clock."""
    nvml = started()
    h = nvml.devices[0]
    nvml.nvmlDeviceSetGpuLockedClocks(h, 1000, 1500)
    assert h.gpu_locked_clocks == (1005, 1500)
    nvml.nvmlDeviceSetGpuLockedClocks(h, 0, 5000)
    assert h.gpu_locked_clocks == (210, 1980)
    with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
        nvml.nvmlDeviceSetGpuLockedClocks(h, 1500, 1000)
    assert h.gpu_locked_clocks == (210, 1980)
    nvml.nvmlDeviceResetGpuLockedClocks(h)
    assert h.gpu_locked_clocks is None


def test_memory_locked_clocks_snap_to_supported_clocks() -> None:
    """Locked memory clocks snap to the supported memory clocks; reset clears them."""
    nvml = started(SimGpuSpec(memory_clocks_mhz=(3000, 1000)))
    h = nvml.devices[0]
    nvml.nvmlDeviceSetMemoryLockedClocks(h, 0, 2100)
    assert h.mem_locked_clocks == (1000, 3000)
    with raises_code(pynvml.NVML_ERROR_INVALID_ARGUMENT):
        nvml.nvmlDeviceSetMemoryLockedClocks(h, 3000, 1000)
    assert h.mem_locked_clocks == (1000, 3000)
    nvml.nvmlDeviceResetMemoryLockedClocks(h)
    assert h.mem_locked_clocks is None


def test_supported_clocks() -> None:
    """Supported clocks come back as fresh lists; an unknown memory clock is NOT_FOUND."""
    nvml = started()
    h = nvml.devices[0]
    memory = nvml.nvmlDeviceGetSupportedMemoryClocks(h)
    assert memory == [2619]
    graphics = nvml.nvmlDeviceGetSupportedGraphicsClocks(h, 2619)
    assert graphics == list(H100.graphics_clocks_mhz)
    memory.clear()
    graphics.clear()
    assert nvml.nvmlDeviceGetSupportedMemoryClocks(h) == [2619]
    assert len(nvml.nvmlDeviceGetSupportedGraphicsClocks(h, 2**32 + 2619)) == 119
    with raises_code(pynvml.NVML_ERROR_NOT_FOUND) as info:
        nvml.nvmlDeviceGetSupportedGraphicsClocks(h, 1000)
    assert info.value.value == pynvml.NVML_ERROR_NOT_FOUND


def test_power_stays_under_the_limit_and_varies() -> None:
    """Draw is above idle, below the limit, and changes over time."""
    clock = FakeClock()
    nvml = started(clock=clock)
    h = nvml.devices[0]
    for limit in (200_000, 450_000, 700_000):
        nvml.nvmlDeviceSetPowerManagementLimit(h, limit)
        readings = set()
        for _ in range(60):
            clock.now += 0.5
            power = nvml.nvmlDeviceGetPowerUsage(h)
            assert 70_000 < power <= limit
            readings.add(power)
        assert len(readings) > 10


def test_lower_limit_lowers_power_and_energy_growth() -> None:
    """At the same instant a lower limit draws less, and the counter grows more slowly."""
    clock = FakeClock()
    high, low = started(clock=clock), started(clock=clock)
    low.nvmlDeviceSetPowerManagementLimit(low.devices[0], 300_000)
    assert low.nvmlDeviceGetPowerUsage(low.devices[0]) < high.nvmlDeviceGetPowerUsage(
        high.devices[0]
    )
    start_high = high.nvmlDeviceGetTotalEnergyConsumption(high.devices[0])
    start_low = low.nvmlDeviceGetTotalEnergyConsumption(low.devices[0])
    clock.now += 100
    grown_high = high.nvmlDeviceGetTotalEnergyConsumption(high.devices[0]) - start_high
    grown_low = low.nvmlDeviceGetTotalEnergyConsumption(low.devices[0]) - start_low
    assert grown_low < grown_high
    # 100 s at 55-95% of the headroom above 70 W idle.
    assert 100 * (70_000 + 0.55 * 230_000) <= grown_low <= 100 * 300_000


def test_energy_is_monotonic_and_starts_nonzero() -> None:
    """The counter starts above zero, never decreases and grows when time passes."""
    clock = FakeClock()
    nvml = started(clock=clock)
    h = nvml.devices[0]
    readings = [nvml.nvmlDeviceGetTotalEnergyConsumption(h)]
    assert readings[0] > 0
    for step in (0.0, 1e-9, 0.001, 0.5, 7.0, 0.0, 30.0):
        clock.now += step
        readings.append(nvml.nvmlDeviceGetTotalEnergyConsumption(h))
    assert readings == sorted(readings)
    assert readings[-1] - readings[0] > 37 * 70_000


def test_energy_does_not_depend_on_how_often_it_is_read() -> None:
    """Integration is exact: many small reads and one big read agree."""
    clock = FakeClock()
    often, once = started(clock=clock), started(clock=clock)
    start = once.nvmlDeviceGetTotalEnergyConsumption(once.devices[0])
    for _ in range(1000):
        clock.now += 0.037
        often.nvmlDeviceGetTotalEnergyConsumption(often.devices[0])
    end_often = often.nvmlDeviceGetTotalEnergyConsumption(often.devices[0])
    assert once.nvmlDeviceGetTotalEnergyConsumption(once.devices[0]) - start == pytest.approx(
        end_often - start, abs=2
    )


def test_limit_change_does_not_rewrite_past_energy() -> None:
    """Energy drawn before a limit change is counted at the old limit."""
    clock = FakeClock()
    changed, unchanged = started(clock=clock), started(clock=clock)
    clock.now += 10
    changed.nvmlDeviceSetPowerManagementLimit(changed.devices[0], 200_000)
    assert changed.nvmlDeviceGetTotalEnergyConsumption(
        changed.devices[0]
    ) == unchanged.nvmlDeviceGetTotalEnergyConsumption(unchanged.devices[0])


def test_missing_energy_counter_is_not_supported_armed_or_not() -> None:
    """energy_counter=False fails NOT_SUPPORTED before and after arm()."""
    nvml = started(SimGpuSpec(energy_counter=False))
    for _ in range(2):
        with raises_code(pynvml.NVML_ERROR_NOT_SUPPORTED):
            nvml.nvmlDeviceGetTotalEnergyConsumption(nvml.devices[0])
        nvml.arm()


def test_faults_apply_only_after_arm_and_keep_state() -> None:
    """A configured fault is ignored at start-up, then fails without changing state."""
    nvml = started(SimGpuSpec(faults={"set_persistence_mode": "NVML_ERROR_NO_PERMISSION"}))
    h = nvml.devices[0]
    nvml.nvmlDeviceSetPersistenceMode(h, 1)
    nvml.arm()
    with pytest.raises(pynvml.NVMLError) as info:
        nvml.nvmlDeviceSetPersistenceMode(h, 0)
    assert type(info.value) is pynvml.NVMLError_NoPermission
    assert info.value.value == pynvml.NVML_ERROR_NO_PERMISSION
    assert h.persistence_mode == 1
    assert nvml.nvmlDeviceGetPersistenceMode(h) == 1


@pytest.mark.parametrize("key", sorted(FAULT_FUNCTIONS))
def test_every_fault_key_fails_its_functions(key: str) -> None:
    """Each fault key makes exactly its NVML functions fail with the configured error."""
    code_name = "NVML_ERROR_GPU_IS_LOST"
    nvml = started(SimGpuSpec(faults={key: code_name}), H100)
    nvml.arm()
    faulty, healthy = nvml.devices
    for name, args in handle_calls(faulty).items():
        call = getattr(nvml, name)
        if name in FAULT_FUNCTIONS[key]:
            with raises_code(ERROR_CODES[code_name]) as info:
                call(*args)
            assert info.value.value == ERROR_CODES[code_name]
        else:
            call(*args)
        call(healthy, *args[1:])


def test_single_function_fault_beats_composite() -> None:
    """reset_gpu_locked_clocks' error wins over reset_locked_clocks' on the shared function."""
    nvml = started(
        SimGpuSpec(
            faults={
                "reset_locked_clocks": "NVML_ERROR_TIMEOUT",
                "reset_gpu_locked_clocks": "NVML_ERROR_NO_PERMISSION",
            }
        )
    )
    nvml.arm()
    with raises_code(pynvml.NVML_ERROR_NO_PERMISSION):
        nvml.nvmlDeviceResetGpuLockedClocks(nvml.devices[0])
    with raises_code(pynvml.NVML_ERROR_TIMEOUT):
        nvml.nvmlDeviceResetMemoryLockedClocks(nvml.devices[0])


def test_faults_can_be_injected_at_runtime() -> None:
    """A fault added to SimDevice.faults while running takes effect on the next call."""
    nvml = started()
    nvml.arm()
    h = nvml.devices[0]
    nvml.nvmlDeviceGetPowerUsage(h)
    h.faults["get_power"] = "NVML_ERROR_UNKNOWN"
    with raises_code(pynvml.NVML_ERROR_UNKNOWN):
        nvml.nvmlDeviceGetPowerUsage(h)


def test_bad_programmatic_fault_is_rejected() -> None:
    """A spec built in Python with an unknown fault is refused up front."""
    with pytest.raises(ValueError, match="unknown fault"):
        SimNvml([SimGpuSpec(faults={"get_power": "NOPE"})])


def elapsed(call: Any, *args: Any) -> float:
    """Seconds that call(*args) took."""
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def test_latency_applies_only_after_arm() -> None:
    """latency_ms delays calls on its GPU once armed, and latency_s can change at runtime."""
    nvml = started(SimGpuSpec(latency_ms=80), H100)
    slow, fast = nvml.devices
    assert slow.latency_s == pytest.approx(0.08)
    assert elapsed(nvml.nvmlDeviceGetPowerUsage, slow) < 0.05
    nvml.arm()
    assert elapsed(nvml.nvmlDeviceGetPowerUsage, slow) >= 0.08
    assert elapsed(nvml.nvmlDeviceGetPowerUsage, fast) < 0.05
    slow.latency_s = 0
    assert elapsed(nvml.nvmlDeviceGetPowerUsage, slow) < 0.05


def in_thread(call: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Start call(*args) in a daemon thread; its result lands in the returned list."""
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(call(*args)), daemon=True)
    worker.start()
    return worker, results


def test_hold_blocks_armed_calls_on_its_gpu_only() -> None:
    """An unset hold Event parks armed calls on that GPU until it is set."""
    nvml = started(H100, H100)
    held, free = nvml.devices
    held.hold = threading.Event()
    # Threads throughout, so a regression fails the test instead of hanging the run.
    worker, results = in_thread(nvml.nvmlDeviceGetPowerManagementLimit, held)
    worker.join(5)
    assert results == [700_000]  # not armed yet
    nvml.arm()
    worker, results = in_thread(nvml.nvmlDeviceGetPowerManagementLimit, held)
    worker.join(0.2)
    assert worker.is_alive()
    assert nvml.nvmlDeviceGetPowerManagementLimit(free) == 700_000
    held.hold.set()
    worker.join(5)
    assert results == [700_000]


def test_concurrent_calls_are_safe() -> None:
    """Many threads setting limits and reading energy leave consistent state."""
    nvml = SimNvml([H100])  # real clock, so the counter moves between reads
    nvml.nvmlInit()
    h: SimDevice = nvml.devices[0]
    errors: list[BaseException] = []
    limits = [200_000 + 50_000 * i for i in range(8)]

    def work(limit: int) -> None:
        try:
            last = 0
            for _ in range(300):
                nvml.nvmlDeviceSetPowerManagementLimit(h, limit)
                assert nvml.nvmlDeviceGetPowerManagementLimit(h) in limits
                energy = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                assert energy >= last
                last = energy
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(limit,)) for limit in limits]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert h.power_limit_mw in limits


def test_sim_state_file_outlives_the_sim(tmp_path: Any) -> None:
    """With a state file, a new SimNvml finds the settings the last one left."""
    path = str(tmp_path / "gpus.json")
    first = SimNvml(default_sim_gpus(2), state_file=path)
    first.nvmlInit()
    handle = first.nvmlDeviceGetHandleByIndex(1)
    first.nvmlDeviceSetPowerManagementLimit(handle, 300_000)
    first.nvmlDeviceSetPersistenceMode(handle, 1)
    first.nvmlDeviceSetGpuLockedClocks(handle, 900, 1200)
    second = SimNvml(default_sim_gpus(2), state_file=path)
    device = second.devices[1]
    assert device.power_limit_mw == 300_000
    assert device.persistence_mode == 1
    assert device.gpu_locked_clocks == first.devices[1].gpu_locked_clocks
    assert second.devices[0].power_limit_mw == first.devices[0].spec.default_power_limit_mw


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": "other"}',
        '{"format": "zeusd-sim-state/1", "gpus": []}',
        '{"format": "zeusd-sim-state/1", "gpus": {"UUID0": {"power_limit_mw": 1}}}',
        '{"format": "zeusd-sim-state/1", "gpus": {"UUID0": {"power_limit_mw": 1,'
        ' "persistence_mode": 0, "gpu_locked_clocks": null, "mem_locked_clocks": null}}}',
        '{"format": "zeusd-sim-state/1", "gpus": {"UUID0": {"power_limit_mw": 300000,'
        ' "persistence_mode": 0, "gpu_locked_clocks": [1, 2], "mem_locked_clocks": null}}}',
    ],
)
def test_bad_sim_state_file_is_a_clear_error(tmp_path: Any, text: str) -> None:
    """A state file that does not fit the simulated GPUs is refused with where and why."""
    uuid = SimNvml(default_sim_gpus(1)).devices[0].uuid
    path = tmp_path / "gpus.json"
    path.write_text(text.replace("UUID0", uuid))
    with pytest.raises(SimConfigError, match="--sim-state"):
        SimNvml(default_sim_gpus(1), state_file=str(path))
