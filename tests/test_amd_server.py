"""In-process daemons on simulated AMD GPUs and with command overrides, over a temp socket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import LineClient
from zeusd.app import Running, serve
from zeusd.config import Config
from zeusd.gpu.amdsmi_backend import AmdsmiBackend
from zeusd.gpu.backend import NvmlBackend
from zeusd.gpu.device import GpuBackend
from zeusd.gpu.overrides import OverriddenBackend, load_overrides
from zeusd.sim import SimAmdsmi, SimNvml, default_sim_gpus


class Daemons:
    """Starts in-process daemons over given backends; stops them all at the test's end."""

    def __init__(self, nursery: trio.Nursery, directory: str) -> None:
        self.nursery = nursery
        self.directory = directory
        self.running: list[Running] = []

    async def serve(self, backend: GpuBackend, **config: Any) -> str:
        path = os.path.join(self.directory, "zeusd.sock")
        config.setdefault("rapl_root", os.path.join(self.directory, "no-powercap"))
        cfg = Config(gpu_backend="sim", socket_path=path, **config)
        running: Running = await self.nursery.start(
            lambda **kw: serve(cfg, backend, handle_signals=False, **kw)
        )
        self.running.append(running)
        return path


@pytest.fixture
async def daemons(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[Daemons]:
    started = Daemons(nursery, sock_dir)
    yield started
    for running in started.running:
        running.server.stop(force=True)


@pytest.fixture
async def amd(daemons: Daemons) -> AsyncIterator[tuple[LineClient, SimAmdsmi]]:
    sim = SimAmdsmi(default_sim_gpus(2, "amd"))
    backend = AmdsmiBackend.open(sim, name="sim")
    sim.arm()
    path = await daemons.serve(backend, num_workers=2)
    client = LineClient(await trio.open_unix_socket(path))
    yield client, sim
    await client.aclose()


async def test_amd_gpus_are_discovered(amd: tuple[LineClient, SimAmdsmi]) -> None:
    """discover lists the simulated MI300Xs with amdsmi's UUIDs and PCI addresses."""
    client, sim = amd
    result = await client.result("discover")
    assert [g["name"] for g in result["gpus"]] == ["AMD Instinct MI300X"] * 2
    assert result["gpus"][1]["uuid"] == sim.devices[1].uuid
    assert result["gpus"][1]["pci_address"] == "0000:15:00.0"
    assert result["gpus"][0]["cumulative_energy_available"] is True


async def test_amd_power_limit_in_milliwatts_end_to_end(amd: tuple[LineClient, SimAmdsmi]) -> None:
    """The wire's mW become amdsmi's µW and come back as the same mW."""
    client, sim = amd
    params = {"gpu_ids": [1], "power_limit_mw": 456_789}
    assert await client.result("gpu.set_power_limit", params) == {"applied": [1]}
    assert sim.devices[1].power_cap_uw == 456_789_000
    assert await client.result("gpu.get_power_limit", {"gpu_ids": [1]}) == {
        "1": {"power_limit_mw": 456_789}
    }
    assert await client.result("gpu.get_power_limit_constraints", {"gpu_ids": [0]}) == {
        "0": {
            "min_power_limit_mw": 200_000,
            "max_power_limit_mw": 750_000,
            "default_power_limit_mw": 750_000,
        }
    }


async def test_amd_out_of_range_limit_is_refused_before_amdsmi(
    amd: tuple[LineClient, SimAmdsmi],
) -> None:
    """A limit beyond the MI300X's cap is -32602 with the range, and amdsmi is not called."""
    client, sim = amd
    response = await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 800_000})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["max"] == 750_000
    assert sim.devices[0].power_cap_uw == 750_000_000


@pytest.mark.parametrize(
    ("method", "params"),
    [("gpu.set_persistence_mode", {"enabled": True}), ("gpu.get_persistence_mode", {})],
)
async def test_amd_persistence_mode_is_a_not_supported_device_error(
    amd: tuple[LineClient, SimAmdsmi], method: str, params: dict[str, Any]
) -> None:
    """Persistence mode on AMD: -32001 with NVML_ERROR_NOT_SUPPORTED for each GPU."""
    client, _ = amd
    response = await client.call(method, {"gpu_ids": [0, 1], **params})
    error = response["error"]
    assert error["code"] == -32001
    assert error["data"]["succeeded"] == []
    assert {e["nvml_error"] for e in error["data"]["errors"].values()} == {
        "NVML_ERROR_NOT_SUPPORTED"
    }


async def test_amd_reads_clocks_energy_and_power(amd: tuple[LineClient, SimAmdsmi]) -> None:
    """Clocks in MHz, energy in mJ (growing), power in mW, locked clocks reaching amdsmi."""
    client, sim = amd
    clocks = await client.result("gpu.get_supported_graphics_clocks", {"gpu_ids": [0]})
    assert clocks == {"0": {"graphics_clocks_mhz": [2100, 1300, 500]}}
    memory = await client.result("gpu.get_supported_memory_clocks", {"gpu_ids": [0]})
    assert memory == {"0": {"memory_clocks_mhz": [1300, 1200, 1100, 900]}}
    first = (await client.result("gpu.get_cumulative_energy", {"gpu_ids": [0]}))["0"]["energy_mj"]
    await trio.sleep(0.05)
    second = (await client.result("gpu.get_cumulative_energy", {"gpu_ids": [0]}))["0"]
    assert second["energy_mj"] > first
    power = await client.result("gpu.get_power", {"gpu_ids": [0]})
    assert 70_000 <= power["power_mw"]["0"] <= 750_000
    assert power["power_mw"]["0"] % 1000 == 0  # amdsmi reports whole watts
    params = {"gpu_ids": [0], "min_clock_mhz": 800, "max_clock_mhz": 1900}
    assert await client.result("gpu.set_gpu_locked_clocks", params) == {"applied": [0]}
    assert sim.devices[0].clk_range["GFX"] == (800, 1900)
    assert await client.result("gpu.reset_locked_clocks", {"gpu_ids": [0]}) == {"applied": [0]}
    assert sim.devices[0].clk_range["GFX"] == (500, 2100)


# --- command overrides ------------------------------------------------------------------

SLOW_ON_GPU0 = """#!/bin/sh
# Record the call; GPU 0's command never finishes by itself.
echo "$@" >> "{log}"
if [ "$1" = 0 ]; then exec sleep 60; fi
"""


def _overrides_file(directory: Path, body: str) -> str:
    path = directory / "overrides.toml"
    path.write_text(body)
    path.chmod(0o644)
    return str(path)


async def _override_daemon(
    daemons: Daemons, tmp_path: Path, body: str, **config: Any
) -> tuple[LineClient, SimNvml]:
    overrides_path = _overrides_file(tmp_path, body)
    sim = SimNvml(default_sim_gpus(2))
    inner = NvmlBackend.open(sim, name="sim")
    sim.arm()
    backend = OverriddenBackend(inner, load_overrides(overrides_path))
    path = await daemons.serve(backend, gpu_command_overrides=overrides_path, **config)
    return LineClient(await trio.open_unix_socket(path)), sim


def _slow_script(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "calls"
    script = tmp_path / "slow.sh"
    script.write_text(SLOW_ON_GPU0.format(log=log))
    script.chmod(0o755)
    return str(script), log


async def test_a_hanging_command_fails_its_gpu_and_blocks_no_other(
    daemons: Daemons, tmp_path: Path
) -> None:
    """GPU 0's command hangs: GPU 1's write and read answer at once; GPU 0 gets TIMEOUT."""
    script, log = _slow_script(tmp_path)
    body = (
        f'[set_power_limit]\ncommands = [["{script}", "{{gpu_id}}", "{{power_limit_w}}"]]\n'
        "timeout_s = 3\n"
    )
    # One worker thread only: the daemon must still keep a thread for every GPU.
    client, _ = await _override_daemon(daemons, tmp_path, body, num_workers=1)
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "gpu.set_power_limit",
            "id": "hang",
            "params": {"gpu_ids": [0], "power_limit_mw": 300_000},
        }
    )
    with trio.fail_after(5):  # GPU 0's command is running: it holds its lane's thread
        while not log.exists():
            await trio.sleep(0.01)
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "gpu.set_power_limit",
            "id": "other",
            "params": {"gpu_ids": [1], "power_limit_mw": 400_000},
        }
    )
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "gpu.get_power_limit",
            "id": "read",
            "params": {"gpu_ids": [1]},
        }
    )
    start = trio.current_time()
    first = [await client.read(timeout=2.5), await client.read(timeout=2.5)]
    assert trio.current_time() - start < 2.5  # well before GPU 0's 3 s timeout
    assert {r["id"] for r in first} == {"other", "read"}
    assert all("result" in r for r in first), first
    hung = await client.read(timeout=20)
    assert hung["id"] == "hang"
    failure = hung["error"]["data"]["errors"]["0"]
    assert hung["error"]["code"] == -32001
    assert failure["nvml_error"] == "NVML_ERROR_TIMEOUT"
    assert failure["exit_status"] is None
    assert hung["error"]["data"]["succeeded"] == []
    assert sorted(log.read_text().splitlines()) == ["0 300", "1 400"]
    await client.aclose()


async def test_override_writes_keep_lane_order_and_are_restored_on_close(
    daemons: Daemons, tmp_path: Path
) -> None:
    """Writes through commands go in read order and are put back, by command, on close."""
    record = tmp_path / "record.sh"
    log = tmp_path / "calls"
    record.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    record.chmod(0o755)
    body = f'[set_power_limit]\ncommands = [["{record}", "{{gpu_id}}", "{{power_limit_mw}}"]]\n'
    client, sim = await _override_daemon(daemons, tmp_path, body, num_workers=2)
    await client.result("session.set_restore_on_close", {"enabled": True})
    for i, mw in enumerate((300_000, 310_000, 320_000)):
        # Notifications, then a read: the read must come after all three in GPU 0's lane.
        await client.send(
            {
                "jsonrpc": "2.0",
                "method": "gpu.set_power_limit",
                "params": {"gpu_ids": [0], "power_limit_mw": mw + i},
            }
        )
    assert await client.result("gpu.get_power_limit", {"gpu_ids": [0]}) == {
        "0": {"power_limit_mw": 700_000}  # the library's value: commands did the writes
    }
    assert log.read_text().splitlines() == ["0 300000", "0 310001", "0 320002"]
    await client.aclose()
    with trio.fail_after(10):
        while len(log.read_text().splitlines()) < 4:
            await trio.sleep(0.02)
    # The value before (read through the library) is put back through the command.
    assert log.read_text().splitlines()[3] == "0 700000"
    assert sim.devices[0].power_limit_mw == 700_000


async def test_a_failing_command_reports_exit_status_and_output(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A command exiting non-zero is -32001 for its GPU with status and output tail."""
    fail = tmp_path / "fail.sh"
    fail.write_text('#!/bin/sh\necho "GPU $1: locked by the site policy" >&2\nexit 4\n')
    fail.chmod(0o755)
    body = f'[set_gpu_locked_clocks]\ncommands = [["{fail}", "{{gpu_id}}"]]\n'
    client, sim = await _override_daemon(daemons, tmp_path, body, num_workers=2)
    response = await client.call(
        "gpu.set_gpu_locked_clocks",
        {"gpu_ids": [0, 1], "min_clock_mhz": 900, "max_clock_mhz": 1200},
    )
    errors = response["error"]["data"]["errors"]
    assert set(errors) == {"0", "1"}
    assert errors["1"]["exit_status"] == 4
    assert "GPU 1: locked by the site policy" in errors["1"]["output_tail"]
    assert "exited 4" in errors["1"]["message"]
    assert sim.devices[1].gpu_locked_clocks is None
    await client.aclose()
