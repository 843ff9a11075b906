"""The installed zeusd on simulated AMD GPUs, with command overrides, and --gpu-backend auto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from process_helpers import (
    NOBODY,
    ZEUSD,
    DaemonProcess,
    error_of,
    request,
    result_of,
    run_zeusd,
    run_zeusd_unprivileged,
    running_daemon,
    short_tempdir,
)

pytestmark = pytest.mark.process

NO_RAPL = "--rapl-root=/nonexistent/zeusd-test-powercap"


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    directory = short_tempdir()
    yield directory
    subprocess.run(["rm", "-rf", directory], check=False)


def _sock(directory: str) -> str:
    return os.path.join(directory, "zeusd.sock")


def _write(path: str, text: str, mode: int) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def test_sim_vendor_amd_serves_amd_gpus(tmp_dir: str) -> None:
    """--sim-vendor amd: MI300Xs over the simulated amdsmi, mW on the wire, no persistence."""
    path = _sock(tmp_dir)
    with running_daemon("--sim-vendor", "amd", "--sim-gpus", "2", socket_path=path) as daemon:
        assert "(sim backend, 2 GPUs" in daemon.log
        with daemon.connect() as conn:
            found = conn.result("discover")
            assert found["backend"] == "sim"
            assert {g["name"] for g in found["gpus"]} == {"AMD Instinct MI300X"}
            assert conn.result("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=345_678) == {
                "applied": [0]
            }
            assert conn.result("gpu.get_power_limit", gpu_ids=[0]) == {
                "0": {"power_limit_mw": 345_678}
            }
            error = error_of(
                conn.call("gpu.set_persistence_mode", gpu_ids=[1], enabled=True), -32001
            )
            assert error["data"]["errors"]["1"]["nvml_error"] == "NVML_ERROR_NOT_SUPPORTED"
            energy = conn.result("gpu.get_cumulative_energy", gpu_ids=[0, 1])
            assert all(isinstance(v["energy_mj"], int) for v in energy.values())


def test_sim_vendor_needs_the_sim_backend(tmp_dir: str) -> None:
    """--sim-vendor without --gpu-backend sim is a usage error (exit 2), nothing created."""
    done = run_zeusd(
        "--gpu-backend", "nvml", "--sim-vendor", "amd", "--socket-path", _sock(tmp_dir)
    )
    assert done.returncode == 2
    assert "--sim-vendor" in done.stderr
    assert not os.path.lexists(_sock(tmp_dir))


@pytest.mark.parametrize("mode", [0o666, 0o664])
def test_unsafe_overrides_file_stops_start_up(tmp_dir: str, mode: int) -> None:
    """A group- or world-writable overrides file: exit 1 with the reason, no socket."""
    file = _write(
        os.path.join(tmp_dir, "overrides.toml"),
        '[reset_power_limit]\ncommands = [["true"]]\n',
        mode,
    )
    done = run_zeusd(
        "--gpu-backend",
        "sim",
        NO_RAPL,
        "--gpu-command-overrides",
        file,
        "--socket-path",
        _sock(tmp_dir),
    )
    assert done.returncode == 1, done.stderr
    assert "writable by group or others" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.lexists(_sock(tmp_dir))


def test_broken_overrides_file_stops_start_up(tmp_dir: str) -> None:
    """An unknown placeholder is refused at start-up, naming the method and command."""
    file = _write(
        os.path.join(tmp_dir, "overrides.toml"),
        '[reset_power_limit]\ncommands = [["/bin/echo", "{power_limit_mw}"]]\n',
        0o644,
    )
    done = run_zeusd(
        "--gpu-backend",
        "sim",
        NO_RAPL,
        "--gpu-command-overrides",
        file,
        "--socket-path",
        _sock(tmp_dir),
    )
    assert done.returncode == 1
    assert "[reset_power_limit], command 1: unknown placeholder {power_limit_mw}" in done.stderr


SLOW = """#!/bin/sh
echo "$(id -u) $@" >> "{log}"
if [ "$1" = 0 ]; then exec sleep 60; fi
"""


def _overrides(directory: str, timeout_s: float = 3) -> tuple[str, str]:
    log = os.path.join(directory, "calls")
    script = _write(os.path.join(directory, "set.sh"), SLOW.format(log=log), 0o755)
    text = (
        f'[set_power_limit]\ncommands = [["{script}", "{{gpu_id}}", "{{power_limit_w}}"]]\n'
        f"timeout_s = {timeout_s}\n"
    )
    return _write(os.path.join(directory, "overrides.toml"), text, 0o644), log


def test_hanging_override_command_blocks_no_other_gpu(tmp_dir: str) -> None:
    """Real process, one worker thread: GPU 0's command hangs, GPU 1 answers; then TIMEOUT."""
    file, log = _overrides(tmp_dir)
    args = ("--gpu-command-overrides", file, "--num-workers", "1", "--sim-gpus", "2")
    with running_daemon(*args, socket_path=_sock(tmp_dir)) as daemon, daemon.connect(30) as conn:
        assert "gpu-control through site commands for: set_power_limit" in daemon.log
        conn.send(request("gpu.set_power_limit", "hang", gpu_ids=[0], power_limit_mw=300_000))
        deadline = time.monotonic() + 10
        while not os.path.exists(log) and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        conn.send(request("gpu.set_power_limit", "other", gpu_ids=[1], power_limit_mw=400_000))
        conn.send(request("gpu.get_power_limit", "read", gpu_ids=[1]))
        # Both finish back to back on GPU 1's lane; their replies may come in either order.
        replies = {reply["id"]: reply for reply in (conn.read(), conn.read())}
        assert time.monotonic() - start < 2.5  # before GPU 0's 3 s timeout
        assert result_of(replies["other"]) == {"applied": [1]}
        # The site command stands in for the driver, so the read is the simulated GPU's.
        assert result_of(replies["read"]) == {"1": {"power_limit_mw": 700_000}}
        hung = conn.read()
        failure = error_of(hung, -32001)["data"]["errors"]["0"]
        assert failure["nvml_error"] == "NVML_ERROR_TIMEOUT"
        assert "did not finish within 3 s" in failure["message"]


def _can_initialise_nvml() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_overrides_lift_the_root_check(tmp_dir: str) -> None:
    """Non-root with the nvml backend: refused without overrides, past the check with them."""
    file, _ = _overrides(tmp_dir)
    os.chmod(tmp_dir, 0o755)
    refused, how = run_zeusd_unprivileged("--gpu-backend", "nvml", "--socket-path", _sock(tmp_dir))
    assert refused.returncode == 1, (how, refused.stderr)
    assert "must run as root" in refused.stderr
    assert "--gpu-command-overrides" in refused.stderr
    if _can_initialise_nvml():
        pytest.skip("a real NVIDIA driver is present: the daemon would start and serve it")
    allowed, how = run_zeusd_unprivileged(
        "--gpu-backend", "nvml", "--gpu-command-overrides", file, "--socket-path", _sock(tmp_dir)
    )
    assert allowed.returncode == 1, (how, allowed.stderr)
    assert "must run as root" not in allowed.stderr
    assert "cannot initialise NVML" in allowed.stderr  # the next step: no driver here


#: Runs zeusd's CLI after dropping from root to uid/gid 65534 (the interpreter may live
#: where that user cannot reach, so it starts as root and drops before main()).
AS_NOBODY = (
    "import os, sys\n"
    "import encodings.ascii  # codecs are imported lazily, from where nobody cannot read\n"
    "from zeusd.cli import main\n"
    f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_overrides_run_as_the_non_root_daemon_user(tmp_dir: str) -> None:
    """A daemon running as a non-root user carries out writes with the site's commands."""
    os.chmod(tmp_dir, 0o1777)  # sticky: the socket path check refuses a plain 777 parent
    file, log = _overrides(tmp_dir)
    root = os.geteuid() == 0
    uid = NOBODY if root else os.geteuid()
    program = (sys.executable, "-c", AS_NOBODY) if root else (ZEUSD,)
    args = ["--gpu-backend", "sim", NO_RAPL, "--sim-gpus", "2"]
    args += ["--gpu-command-overrides", file, "--socket-path", _sock(tmp_dir)]
    daemon = DaemonProcess(args, _sock(tmp_dir), program=program)
    try:
        daemon.wait_ready()
        with daemon.connect() as conn:
            assert conn.result("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=250_500) == {
                "applied": [1]
            }
        assert Path(log).read_text().splitlines() == [f"{uid} 1 250.5"]
    finally:
        daemon.stop(signal.SIGTERM)


def test_auto_backend_picks_a_vendor_or_says_why_not(tmp_dir: str) -> None:
    """The default backend (auto) serves NVML where a driver finds GPUs, else exits saying why."""
    args = ("--socket-path", _sock(tmp_dir), NO_RAPL)
    if _can_initialise_nvml() and os.geteuid() == 0:
        daemon = DaemonProcess(args, _sock(tmp_dir))
        try:
            daemon.wait_ready()
            assert "(nvml backend" in daemon.log
        finally:
            daemon.stop()
        return
    done = run_zeusd("--allow-unprivileged", *args)
    assert done.returncode == 1, done.stderr
    assert "no GPUs found" in done.stderr
    assert "nvml:" in done.stderr
    assert "amdsmi:" in done.stderr
    assert "--gpu-backend sim" in done.stderr
    assert not os.path.lexists(_sock(tmp_dir))
