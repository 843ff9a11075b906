"""Every method through the in-process daemon: results, and each NVML error path."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd.core.methods import build_methods
from zeusd.rpc.openrpc import with_rpc_discover
from zeusd.sim import FAULT_FUNCTIONS, SimGpuSpec

METHODS = with_rpc_discover(build_methods())

# Params that make each GPU method valid for GPU 0 (and GPU 1 where a list is given).
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "gpu.set_power_limit": {"power_limit_mw": 300_000},
    "gpu.reset_power_limit": {},
    "gpu.set_persistence_mode": {"enabled": True},
    "gpu.set_gpu_locked_clocks": {"min_clock_mhz": 1000, "max_clock_mhz": 1500},
    "gpu.reset_gpu_locked_clocks": {},
    "gpu.set_mem_locked_clocks": {"min_clock_mhz": 2619, "max_clock_mhz": 2619},
    "gpu.reset_mem_locked_clocks": {},
    "gpu.reset_locked_clocks": {},
    "gpu.get_power_limit": {},
    "gpu.get_power_limit_constraints": {},
    "gpu.get_persistence_mode": {},
    "gpu.get_power": {},
    "gpu.get_cumulative_energy": {},
    "gpu.get_supported_memory_clocks": {},
    "gpu.get_supported_graphics_clocks": {"memory_clock_mhz": 2619},
}
# One-shot GPU methods that call NVML; gpu.subscribe_power streams and is tested in
# test_streaming.py; gpu.get_locked_clocks answers from the daemon's memory of the locks it
# set (NVML cannot read them back) and is tested below.
NOT_NVML = {"gpu.subscribe_power", "gpu.get_locked_clocks"}
GPU_METHODS = [name for name in METHODS if name.startswith("gpu.") and name not in NOT_NVML]


def test_every_gpu_method_has_test_params() -> None:
    """The tables below cover every GPU method the daemon serves."""
    assert sorted(VALID_PARAMS) == sorted(GPU_METHODS)


def test_every_fault_key_names_a_method() -> None:
    """Each simulator fault key is a served method without its 'gpu.' prefix."""
    assert sorted(f"gpu.{key}" for key in FAULT_FUNCTIONS) == sorted(GPU_METHODS)


async def test_discover_describes_gpus_and_groups(daemon: SimDaemon, client: LineClient) -> None:
    """discover lists each GPU with NVML's identity and the enabled groups."""
    result = await client.result("discover")
    assert result["backend"] == "sim"
    assert result["auth_required"] is False
    assert result["cpus"] == []
    assert result["enabled_api_groups"] == ["gpu-control", "gpu-read"]
    assert [g["id"] for g in result["gpus"]] == [0, 1, 2, 3]
    assert result["gpus"][2]["uuid"] == daemon.sim.devices[2].uuid
    assert result["gpus"][0]["pci_address"] == "00000000:18:00.0"


async def test_time_is_the_daemon_clock(client: LineClient) -> None:
    """time returns integer Unix milliseconds taken during the call."""
    before = int(time.time() * 1000)
    stamp = (await client.result("time"))["timestamp_ms"]
    after = int(time.time() * 1000)
    assert isinstance(stamp, int)
    assert before <= stamp <= after


async def test_writes_change_state_and_resets_restore_it(
    daemon: SimDaemon, client: LineClient
) -> None:
    """Each write shows in the GPU; each reset brings back the default."""
    gpu = daemon.sim.devices[1]
    calls: list[tuple[str, dict[str, Any], Any]] = [
        ("gpu.set_power_limit", {"power_limit_mw": 280_000}, lambda: gpu.power_limit_mw == 280_000),
        ("gpu.reset_power_limit", {}, lambda: gpu.power_limit_mw == 700_000),
        ("gpu.set_persistence_mode", {"enabled": True}, lambda: gpu.persistence_mode == 1),
        ("gpu.set_persistence_mode", {"enabled": False}, lambda: gpu.persistence_mode == 0),
        (
            "gpu.set_gpu_locked_clocks",
            {"min_clock_mhz": 1003, "max_clock_mhz": 1400},
            lambda: gpu.gpu_locked_clocks == (1005, 1395),
        ),
        ("gpu.reset_gpu_locked_clocks", {}, lambda: gpu.gpu_locked_clocks is None),
        (
            "gpu.set_mem_locked_clocks",
            {"min_clock_mhz": 2619, "max_clock_mhz": 2619},
            lambda: gpu.mem_locked_clocks == (2619, 2619),
        ),
        ("gpu.reset_mem_locked_clocks", {}, lambda: gpu.mem_locked_clocks is None),
        (
            "gpu.set_gpu_locked_clocks",
            {"min_clock_mhz": 210, "max_clock_mhz": 210},
            lambda: gpu.gpu_locked_clocks == (210, 210),
        ),
        ("gpu.reset_locked_clocks", {}, lambda: gpu.gpu_locked_clocks is None),
    ]
    for method, params, check in calls:
        result = await client.result(method, {"gpu_ids": [1], **params})
        assert result == {"applied": [1]}, method
        assert check(), method


async def test_reads_have_the_documented_shape(client: LineClient) -> None:
    """Each read returns per-GPU objects keyed by string id with integer values."""
    ids = {"gpu_ids": [0, 3]}
    assert await client.result("gpu.get_power_limit", ids) == {
        "0": {"power_limit_mw": 700_000},
        "3": {"power_limit_mw": 700_000},
    }
    assert (await client.result("gpu.get_power_limit_constraints", {"gpu_ids": [0]}))["0"] == {
        "min_power_limit_mw": 200_000,
        "max_power_limit_mw": 700_000,
        "default_power_limit_mw": 700_000,
    }
    assert await client.result("gpu.get_persistence_mode", {"gpu_ids": [3]}) == {
        "3": {"enabled": False}
    }
    power = await client.result("gpu.get_power", ids)
    assert set(power) == {"timestamp_ms", "power_mw"}
    assert set(power["power_mw"]) == {"0", "3"}
    assert all(70_000 <= v <= 700_000 for v in power["power_mw"].values())
    energy = await client.result("gpu.get_cumulative_energy")
    assert set(energy) == {"0", "1", "2", "3"}
    assert all(isinstance(v["energy_mj"], int) for v in energy.values())
    assert await client.result("gpu.get_supported_memory_clocks", {"gpu_ids": [2]}) == {
        "2": {"memory_clocks_mhz": [2619]}
    }
    graphics = await client.result("gpu.get_supported_graphics_clocks", {"gpu_ids": [2]})
    clocks = graphics["2"]["graphics_clocks_mhz"]
    assert clocks[0] == 1980
    assert clocks[-1] == 210
    assert len(clocks) == (1980 - 210) // 15 + 1


async def test_locked_clocks_read_back_what_was_set_until_reset(client: LineClient) -> None:
    """get_locked_clocks shows each lock set through the daemon, as asked, until its reset."""
    nothing = {"gpu_locked_clocks": None, "mem_locked_clocks": None}
    assert await client.result("gpu.get_locked_clocks", {"gpu_ids": [0, 1]}) == {
        "0": nothing,
        "1": nothing,
    }
    lock = {"min_clock_mhz": 1003, "max_clock_mhz": 1400}
    mem = {"min_clock_mhz": 2619, "max_clock_mhz": 2619}
    await client.result("gpu.set_gpu_locked_clocks", {"gpu_ids": [1], **lock})
    await client.result("gpu.set_mem_locked_clocks", {"gpu_ids": [1], **mem})
    got = await client.result("gpu.get_locked_clocks")
    assert got["1"] == {"gpu_locked_clocks": lock, "mem_locked_clocks": mem}
    assert got["0"] == nothing
    await client.result("gpu.reset_gpu_locked_clocks", {"gpu_ids": [1]})
    got = await client.result("gpu.get_locked_clocks", {"gpu_ids": [1]})
    assert got == {"1": {"gpu_locked_clocks": None, "mem_locked_clocks": mem}}
    await client.result("gpu.reset_locked_clocks", {"gpu_ids": [1]})
    assert await client.result("gpu.get_locked_clocks", {"gpu_ids": [1]}) == {"1": nothing}


async def test_a_failed_lock_is_not_reported_as_set(sock_dir: str) -> None:
    """A lock NVML refused is not shown by get_locked_clocks."""
    specs = [SimGpuSpec(faults={"set_gpu_locked_clocks": "NVML_ERROR_NO_PERMISSION"})]
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(nursery, specs, sock_dir)
        client = await daemon.connect()
        lock = {"gpu_ids": [0], "min_clock_mhz": 1000, "max_clock_mhz": 1500}
        refused = await client.call("gpu.set_gpu_locked_clocks", lock)
        got = await client.result("gpu.get_locked_clocks")
        await client.aclose()
        daemon.running.server.stop(force=True)
    assert refused["error"]["code"] == -32001
    assert got == {"0": {"gpu_locked_clocks": None, "mem_locked_clocks": None}}


async def test_energy_grows_between_reads(client: LineClient) -> None:
    """The cumulative energy counter is monotonic and increases over time."""
    first = (await client.result("gpu.get_cumulative_energy", {"gpu_ids": [0]}))["0"]
    await trio.sleep(0.05)
    second = (await client.result("gpu.get_cumulative_energy", {"gpu_ids": [0]}))["0"]
    assert second["energy_mj"] > first["energy_mj"]


@pytest.mark.parametrize("method", GPU_METHODS)
async def test_each_nvml_failure_is_a_device_error(method: str, sock_dir: str) -> None:
    """A faulted NVML call fails its method with -32001, naming the GPU and the NVML error."""
    key = method.removeprefix("gpu.")
    specs = [SimGpuSpec(), SimGpuSpec(faults={key: "NVML_ERROR_GPU_IS_LOST"})]
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(nursery, specs, sock_dir)
        client = await daemon.connect()
        response = await client.call(method, {"gpu_ids": [0, 1], **VALID_PARAMS[method]})
        await client.aclose()
        daemon.running.server.stop(force=True)
    error = response["error"]
    assert error["code"] == -32001
    assert error["message"] == "Device error"
    assert error["data"]["succeeded"] == [0]
    assert error["data"]["errors"]["1"]["nvml_error"] == "NVML_ERROR_GPU_IS_LOST"
    assert error["data"]["errors"]["1"]["message"]
    assert list(error["data"]["errors"]) == ["1"]


async def test_gpu_without_energy_counter_fails_energy_read(sock_dir: str) -> None:
    """energy_counter=false: discover says so; the read is NOT_SUPPORTED, no partial result."""
    async with trio.open_nursery() as nursery:
        daemon = await start_sim_daemon(
            nursery, [SimGpuSpec(), SimGpuSpec(energy_counter=False)], sock_dir
        )
        client = await daemon.connect()
        gpus = (await client.result("discover"))["gpus"]
        response = await client.call("gpu.get_cumulative_energy")
        await client.aclose()
        daemon.running.server.stop(force=True)
    assert [g["cumulative_energy_available"] for g in gpus] == [True, False]
    assert "result" not in response
    assert response["error"]["data"]["errors"]["1"]["nvml_error"] == "NVML_ERROR_NOT_SUPPORTED"
    assert response["error"]["data"]["succeeded"] == [0]


async def test_rpc_discover_describes_every_method(client: LineClient) -> None:
    """rpc.discover returns an OpenRPC document listing every served method with its params."""
    doc = await client.result("rpc.discover")
    assert doc["openrpc"].startswith("1.")
    by_name = {m["name"]: m for m in doc["methods"]}
    assert sorted(by_name) == sorted(METHODS)
    params = {p["name"]: p for p in by_name["gpu.set_power_limit"]["params"]}
    assert params["gpu_ids"]["required"] is True
    assert params["power_limit_mw"]["schema"]["type"] == "integer"
    reads = {p["name"]: p for p in by_name["gpu.get_power"]["params"]}
    assert reads["gpu_ids"]["required"] is False
    assert by_name["gpu.set_power_limit"]["x-api-group"] == "gpu-control"
