"""The examples and the README's quick-start script, run against a simulated daemon."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_helpers import DaemonProcess, LineConnection, running_daemon, short_tempdir

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    path = os.path.join(short_tempdir(), "zeusd.sock")
    with running_daemon(socket_path=path) as d:
        yield d


def test_socat_example(daemon: DaemonProcess) -> None:
    """examples/socat.sh prints one valid response line per request, batch included."""
    out = subprocess.run(
        [str(ROOT / "examples" / "socat.sh"), daemon.socket_path or ""],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    replies = [json.loads(line) for line in out.splitlines()]
    singles = {r["id"]: r for r in replies if isinstance(r, dict)}
    assert singles[2]["result"] == {"applied": [0]}
    assert singles[3]["result"] == {"0": {"power_limit_mw": 300_000}}
    (batch,) = [r for r in replies if isinstance(r, list)]
    assert [r["id"] for r in batch] == [4, 5]
    assert len(replies) == 4  # the reset was a notification


def test_plain_python_example(daemon: DaemonProcess) -> None:
    """examples/plain_client.py runs end to end and shows the refused request."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plain_client.py"), daemon.socket_path or ""],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    assert "4 GPUs" in out
    assert "'power_limit_mw': 250000" in out
    assert "refused as expected: gpu.set_power_limit: Invalid params (-32602)" in out


def test_nc_example(daemon: DaemonProcess) -> None:
    """examples/nc.sh gets all five replies (in completion order), the refusal included."""
    out = subprocess.run(
        [str(ROOT / "examples" / "nc.sh"), daemon.socket_path or ""],
        capture_output=True,
        check=True,
        timeout=20,
    ).stdout
    replies = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert sorted(replies) == [1, 2, 3, 4, 5]
    assert replies[1]["result"]["0"]["max_power_limit_mw"] == 700_000
    assert replies[3]["result"] == {"0": {"power_limit_mw": 275_000}}
    assert replies[4]["error"]["code"] == -32602
    assert replies[5]["result"] == {"applied": [0]}


def test_node_example(daemon: DaemonProcess) -> None:
    """examples/node_client.js (Node.js standard library only) runs end to end."""
    node = shutil.which("node")
    assert node, "node is missing: scripts/test installs it (Debian package nodejs)"
    out = subprocess.run(
        [node, str(ROOT / "examples" / "node_client.js"), daemon.socket_path or ""],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    ).stdout
    assert out.startswith("4 GPUs: NVIDIA H100")
    assert 'GPU 0 after: {"0":{"power_limit_mw":260000}}' in out
    assert "refused as expected: gpu.set_power_limit: Invalid params (-32602)" in out
    assert 'GPU 0 reset: {"0":{"power_limit_mw":700000}}' in out


def test_client_example(daemon: DaemonProcess) -> None:
    """examples/zeusd_client.py (the Python client) runs end to end via ZEUSD_SOCK_PATH."""
    env = {**os.environ, "ZEUSD_SOCK_PATH": daemon.socket_path or ""}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "zeusd_client.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
        env=env,
    ).stdout
    assert "GPU 0 limit now: 250000" in out
    assert "refused (-32602)" in out
    assert "GPU 0 limit reset: 700000" in out


def test_zeus_monitor_example(daemon: DaemonProcess) -> None:
    """examples/zeus_monitor.py measures energy and sets a limit through Zeus and zeusd."""
    pytest.importorskip("zeus", reason="the zeus extra is not installed")
    env = {**os.environ, "ZEUSD_SOCK_PATH": daemon.socket_path or ""}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "zeus_monitor.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout
    energy = ast.literal_eval(out.splitlines()[0].split("per GPU:", 1)[1].strip())
    assert sorted(energy) == [0, 1, 2, 3]
    assert all(joules > 0 for joules in energy.values()), energy
    assert "GPU 0 power limit (mW): 300000" in out


def test_example_sim_config_starts_the_described_gpus() -> None:
    """examples/sim-gpus.toml is accepted and yields the two GPUs it describes."""
    path = os.path.join(short_tempdir(), "zeusd.sock")
    config = str(ROOT / "examples" / "sim-gpus.toml")
    with running_daemon("--sim-config", config, socket_path=path) as d, d.connect() as conn:
        gpus = conn.result("discover")["gpus"]
        assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        assert [g["cumulative_energy_available"] for g in gpus] == [True, False]
        refused = conn.call("gpu.set_persistence_mode", gpu_ids=[1], enabled=True)
        assert refused["error"]["data"]["errors"]["1"]["nvml_error"] == "NVML_ERROR_NO_PERMISSION"


def test_quick_start_script_serves_and_explains() -> None:
    """scripts/sim starts a daemon on ZEUSD_SOCK_PATH and prints how to use socat."""
    path = os.path.join(short_tempdir(), "zeusd.sock")
    env = {**os.environ, "ZEUSD_SOCK_PATH": path}
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "sim"), "--sim-gpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail("scripts/sim never reported 'listening on'")
        with LineConnection.unix(path) as conn:
            assert len(conn.result("discover")["gpus"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"socat - UNIX-CONNECT:{path}" in out
    assert not os.path.exists(path)


def _sim_banner(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start scripts/sim; return it and the socat address its banner names."""
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "sim"), "--sim-gpus", "1", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("  socat - "):
            return proc, line.removeprefix("  socat - ").strip()
    proc.wait(20)
    pytest.fail(f"scripts/sim printed no socat line (exit {proc.returncode})")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--socket-path", "{dir}/x.sock"],
        ["--socket-path={dir}/x.sock"],
        ["--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0"],
        ["--mode=tcp", "--tcp-bind-address", "127.0.0.1:0"],
    ],
)
def test_quick_start_banner_names_the_address_zeusd_bound(args: list[str]) -> None:
    """With --socket-path or --mode tcp, the banner's socat line reaches the daemon."""
    directory = short_tempdir()
    env = {k: v for k, v in os.environ.items() if k != "ZEUSD_SOCK_PATH"}
    proc, address = _sim_banner([a.format(dir=directory) for a in args], env)
    try:
        if "--mode" in " ".join(args):
            assert address.startswith("TCP:127.0.0.1:")
            assert not address.endswith(":0")  # the port bound, not the one asked for
        else:
            assert address == f"UNIX-CONNECT:{directory}/x.sock"
        done = subprocess.run(
            [shutil.which("socat") or "socat", "-t", "2", "-", address],
            input='{"jsonrpc":"2.0","method":"discover","id":1}\n',
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert len(json.loads(done.stdout)["result"]["gpus"]) == 1
    finally:
        _stop(proc)
