"""zeusctl: param parsing, exit codes and output, run as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_helpers import DaemonProcess, running_daemon, short_tempdir
from zeusd.ctl import UsageError, discover_table, parse_param, parse_params

ZEUSCTL = str(Path(sys.executable).with_name("zeusctl"))


def test_values_are_json_when_they_parse() -> None:
    """JSON values become JSON; anything else is kept as a string."""
    assert parse_param("gpu_ids=[0,1]") == ("gpu_ids", [0, 1])
    assert parse_param("power_limit_mw=250000") == ("power_limit_mw", 250_000)
    assert parse_param("enabled=true") == ("enabled", True)
    assert parse_param("token=abc=def") == ("token", "abc=def")
    assert parse_param("subject=") == ("subject", "")


def test_bad_params_are_usage_errors() -> None:
    """A param without '=' or given twice is refused."""
    with pytest.raises(UsageError, match="name=value"):
        parse_param("gpu_ids")
    with pytest.raises(UsageError, match="twice"):
        parse_params(["a=1", "a=2"])


def test_discover_table_lists_gpus_and_cpus() -> None:
    """The table shows each GPU's id, name and energy counter, and each CPU."""
    table = discover_table(
        {
            "version": "1.0",
            "backend": "sim",
            "gpus": [
                {
                    "id": 0,
                    "name": "NVIDIA H100",
                    "uuid": "GPU-x",
                    "pci_address": "00000000:01:00.0",
                    "cumulative_energy_available": False,
                }
            ],
            "cpus": [{"id": 0, "dram_available": True}],
            "enabled_api_groups": ["gpu-read"],
            "auth_required": False,
        }
    )
    lines = table.splitlines()
    assert lines[0] == "zeusd 1.0 (sim backend)"
    assert "enabled API groups: gpu-read" in lines
    gpu_row = next(line for line in lines if line.startswith("0 ") and "H100" in line)
    assert gpu_row.split()[-2:] == ["no", "GPU-x"]
    assert lines[-1].split() == ["0", "yes"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    path = os.path.join(short_tempdir(), "zeusd.sock")
    with running_daemon(socket_path=path, sim_gpus=2) as d:
        yield d


def zeusctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZEUSCTL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.mark.process
def test_call_prints_result_json_and_exits_0(daemon: DaemonProcess) -> None:
    """A write and a read print their results as JSON."""
    sock = daemon.socket_path or ""
    done = zeusctl(
        "--socket-path", sock, "gpu.set_power_limit", "gpu_ids=[0,1]", "power_limit_mw=250000"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"applied": [0, 1]}
    env = {**os.environ, "ZEUSD_SOCK_PATH": sock}
    done = zeusctl("gpu.get_power_limit", "gpu_ids=[1]", env=env)
    assert json.loads(done.stdout) == {"1": {"power_limit_mw": 250_000}}
    assert zeusctl("--socket-path", sock, "gpu.reset_power_limit", "gpu_ids=[0,1]").returncode == 0


@pytest.mark.process
def test_rpc_error_goes_to_stderr_with_exit_1(daemon: DaemonProcess) -> None:
    """A JSON-RPC error is printed to stderr as JSON and exits 1."""
    done = zeusctl(
        "--socket-path", daemon.socket_path or "", "gpu.set_power_limit", "gpu_ids=[0]",
        "power_limit_mw=5",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    error = json.loads(done.stderr)["error"]
    assert error["code"] == -32602
    assert error["data"]["param"] == "power_limit_mw"


@pytest.mark.process
def test_notify_sends_without_waiting(daemon: DaemonProcess) -> None:
    """--notify exits 0 with no output; the write still happens."""
    sock = daemon.socket_path or ""
    done = zeusctl(
        "--socket-path", sock, "--notify", "gpu.set_power_limit", "gpu_ids=[1]",
        "power_limit_mw=333000",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "")
    read = zeusctl("--socket-path", sock, "gpu.get_power_limit", "gpu_ids=[1]")
    assert json.loads(read.stdout)["1"]["power_limit_mw"] == 333_000
    zeusctl("--socket-path", sock, "gpu.reset_power_limit", "gpu_ids=[1]")


@pytest.mark.process
def test_discover_prints_a_table(daemon: DaemonProcess) -> None:
    """'zeusctl discover' prints the table; --json prints the raw result."""
    sock = daemon.socket_path or ""
    table = zeusctl("--socket-path", sock, "discover").stdout
    assert "(sim backend)" in table
    assert table.count("NVIDIA H100") == 2
    raw = json.loads(zeusctl("--socket-path", sock, "--json", "discover").stdout)
    assert len(raw["gpus"]) == 2


def test_usage_and_connection_errors_exit_2() -> None:
    """Bad arguments, a bad address and an unreachable daemon all exit 2."""
    assert zeusctl().returncode == 2
    assert zeusctl("time", "oops").returncode == 2
    assert zeusctl("--tcp", "nope", "time").returncode == 2
    assert zeusctl("--timeout", "0", "time").returncode == 2
    both = zeusctl("--tcp", "127.0.0.1:1", "--socket-path", "/x", "time")
    assert both.returncode == 2
    missing = os.path.join(short_tempdir(), "none.sock")
    done = zeusctl("--socket-path", missing, "time")
    assert done.returncode == 2
    assert "cannot connect" in done.stderr
