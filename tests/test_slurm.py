"""deploy/slurm: the Prolog and Epilog put a job's GPUs back to defaults through zeusctl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_helpers import DaemonProcess, running_daemon, short_tempdir
from slurm_cluster import SlurmCluster, missing_tools

SLURM_DIR = Path(__file__).resolve().parent.parent / "deploy" / "slurm"
ZEUSCTL = str(Path(sys.executable).with_name("zeusctl"))
DEFAULT_MW = 700_000
NO_LOCKS = {"gpu_locked_clocks": None, "mem_locked_clocks": None}
LOCK = {"min_clock_mhz": 1000, "max_clock_mhz": 1500}

pytestmark = pytest.mark.process


def slurmd_environment(context: str, **job: str) -> dict[str, str]:
    """The environment slurmd 22.05 gives a Prolog/Epilog (recorded from a real one): no PATH."""
    return {
        "SLURM_JOB_ID": "42",
        "SLURM_JOBID": "42",
        "SLURM_JOB_USER": "alice",
        "SLURM_JOB_UID": "1000",
        "SLURM_JOB_GID": "1000",
        "SLURM_UID": "1000",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_CPUS_PER_NODE": "1",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_JOB_RESTART_COUNT": "0",
        "SLURM_NODELIST": "node1",
        "SLURMD_NODENAME": "node1",
        "SLURM_CLUSTER_NAME": "cluster",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_SCRIPT_CONTEXT": context,
        **job,
    }


def gpu_env(gpus: str) -> dict[str, str]:
    """What slurmd sets for a job holding GPUs *gpus* (a comma list of indices)."""
    return {
        "SLURM_JOB_GPUS": gpus,
        "CUDA_VISIBLE_DEVICES": gpus,
        "GPU_DEVICE_ORDINAL": gpus,
        "ROCR_VISIBLE_DEVICES": gpus,
        "ZE_AFFINITY_MASK": gpus,
    }


def site_config(directory: str, socket_path: str, zeusctl: str = ZEUSCTL) -> str:
    """/etc/default/zeusd-slurm as a site writes it (a shell file), in *directory*."""
    path = os.path.join(directory, "zeusd-slurm")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"ZEUSCTL={zeusctl}\nZEUSD_SOCK_PATH={socket_path}\nZEUSD_TIMEOUT=10\n")
    return path


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SLURM_DIR / name)],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def node() -> Iterator[tuple[DaemonProcess, str]]:
    """A sim zeusd on a temporary socket, and the site config file pointing at it."""
    directory = short_tempdir()
    socket_path = os.path.join(directory, "zeusd.sock")
    try:
        with running_daemon(socket_path=socket_path) as daemon:
            yield daemon, site_config(directory, socket_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def change_gpus(daemon: DaemonProcess, gpus: list[int], power_mw: int) -> None:
    with daemon.connect() as conn:
        conn.result("gpu.set_power_limit", gpu_ids=gpus, power_limit_mw=power_mw)
        conn.result("gpu.set_gpu_locked_clocks", gpu_ids=gpus, **LOCK)
        conn.result(
            "gpu.set_mem_locked_clocks", gpu_ids=gpus, min_clock_mhz=2619, max_clock_mhz=2619
        )


def gpu_state(daemon: DaemonProcess) -> dict[int, tuple[int, dict[str, object]]]:
    """Each GPU's (power limit, locks) as the daemon reports them."""
    with daemon.connect() as conn:
        limits = conn.result("gpu.get_power_limit")
        locks = conn.result("gpu.get_locked_clocks")
    return {int(g): (limits[g]["power_limit_mw"], locks[g]) for g in limits}


@pytest.mark.parametrize(
    ("script", "context"), [("epilog.sh", "epilog_slurmd"), ("prolog.sh", "prolog_slurmd")]
)
def test_script_resets_exactly_the_jobs_gpus(
    node: tuple[DaemonProcess, str], script: str, context: str
) -> None:
    """With slurmd's environment, the job's GPUs go back to defaults and the others stay."""
    daemon, config = node
    change_gpus(daemon, [0, 1, 2], 300_000)
    env = {**slurmd_environment(context, **gpu_env("0,2")), "ZEUSD_SLURM_CONFIG": config}
    done = run_script(script, env)
    assert done.returncode == 0, done.stderr
    state = gpu_state(daemon)
    assert state[0] == (DEFAULT_MW, NO_LOCKS)
    assert state[2] == (DEFAULT_MW, NO_LOCKS)
    assert state[1][0] == 300_000
    assert state[1][1]["gpu_locked_clocks"] == LOCK
    assert state[3] == (DEFAULT_MW, NO_LOCKS)
    assert f"job 42 ({context.removesuffix('_slurmd')}): GPUs 0,2 back to default" in done.stderr
    # The resets are audited as root's (the test runs the script as root, as slurmd does).
    daemon.wait_for_log(r"write gpu\.reset_locked_clocks by .*: ok \{\"0\":\"ok\",\"2\":\"ok\"\}")


def test_cuda_visible_devices_is_used_without_slurm_job_gpus(
    node: tuple[DaemonProcess, str],
) -> None:
    """An older slurmd that sets only CUDA_VISIBLE_DEVICES still gets the job's GPUs reset."""
    daemon, config = node
    change_gpus(daemon, [1], 250_000)
    env = {
        **slurmd_environment("epilog_slurmd", CUDA_VISIBLE_DEVICES="1"),
        "ZEUSD_SLURM_CONFIG": config,
    }
    done = run_script("epilog.sh", env)
    assert done.returncode == 0, done.stderr
    assert gpu_state(daemon)[1] == (DEFAULT_MW, NO_LOCKS)


def test_job_without_gpus_calls_nothing(tmp_path: Path) -> None:
    """No GPUs in the job: exit 0 without running zeusctl (here a program that would fail)."""
    config = site_config(str(tmp_path), str(tmp_path / "none.sock"), zeusctl="/bin/false")
    env = {**slurmd_environment("epilog_slurmd"), "ZEUSD_SLURM_CONFIG": config}
    done = run_script("epilog.sh", env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("gpus", ["GPU-3c1a", "0,,1", "1,", "0;reboot", "$(id)"])
def test_a_gpu_list_that_is_not_indices_fails_without_calling(tmp_path: Path, gpus: str) -> None:
    """A GPU list other than comma-separated indices fails (node drained), calling nothing."""
    marker = tmp_path / "called"
    fake = tmp_path / "zeusctl"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    config = site_config(str(tmp_path), str(tmp_path / "none.sock"), zeusctl=str(fake))
    env = {**slurmd_environment("epilog_slurmd", SLURM_JOB_GPUS=gpus), "ZEUSD_SLURM_CONFIG": config}
    done = run_script("epilog.sh", env)
    assert done.returncode == 1
    assert "is not a comma list of indices" in done.stderr
    assert not marker.exists()


def test_unreachable_daemon_fails_the_epilog(tmp_path: Path) -> None:
    """zeusd not running: both resets are tried, each failure said, exit 1 (Slurm drains)."""
    config = site_config(str(tmp_path), str(tmp_path / "missing.sock"))
    env = {**slurmd_environment("epilog_slurmd", **gpu_env("0")), "ZEUSD_SLURM_CONFIG": config}
    done = run_script("epilog.sh", env)
    assert done.returncode == 1
    assert "gpu.reset_power_limit on GPUs 0 failed" in done.stderr
    assert "gpu.reset_locked_clocks on GPUs 0 failed" in done.stderr


def test_gpu_the_daemon_lacks_fails_the_epilog(node: tuple[DaemonProcess, str]) -> None:
    """A GPU index zeusd does not have is an error (-32602), not silently skipped."""
    daemon, config = node
    env = {**slurmd_environment("epilog_slurmd", **gpu_env("0,7")), "ZEUSD_SLURM_CONFIG": config}
    done = run_script("epilog.sh", env)
    assert done.returncode == 1
    assert "-32602" in done.stderr
    assert gpu_state(daemon)[0] == (DEFAULT_MW, NO_LOCKS)


# --- a real Slurm -----------------------------------------------------------------------------

JOB = """#!/bin/sh
# A job that changes its GPUs and records what it saw; the Epilog must undo its changes.
echo "gpus=$SLURM_JOB_GPUS"
"$ZEUSCTL" gpu.get_power_limit > "$OUT/at_start.json"
"$ZEUSCTL" gpu.get_locked_clocks > "$OUT/locks_at_start.json"
"$ZEUSCTL" gpu.set_power_limit "gpu_ids=[$CUDA_VISIBLE_DEVICES]" power_limit_mw=300000 >/dev/null
"$ZEUSCTL" gpu.set_gpu_locked_clocks "gpu_ids=[$CUDA_VISIBLE_DEVICES]" \
    min_clock_mhz=1000 max_clock_mhz=1500 >/dev/null
"$ZEUSCTL" gpu.get_power_limit > "$OUT/in_job.json"
"""


@pytest.fixture
def slurm(tmp_path: Path, node: tuple[DaemonProcess, str]) -> Iterator[SlurmCluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"Slurm not installed (Debian slurmctld slurmd slurm-client munge): {missing}")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to run a Prolog as root")
    _, config = node
    wrappers = {}
    for name in ("prolog.sh", "epilog.sh"):
        # slurm.conf cannot set a Prolog's environment; a site uses /etc/default/zeusd-slurm,
        # the test points the real script at its own copy of that file.
        wrapper = tmp_path / name
        log = tmp_path / "scripts.log"
        wrapper.write_text(
            f"#!/bin/sh\nZEUSD_SLURM_CONFIG={config} exec {SLURM_DIR / name} 2>>{log}\n"
        )
        wrapper.chmod(0o755)
        wrappers[name] = wrapper
    root = short_tempdir()  # munged's socket path must stay short
    cluster = SlurmCluster(Path(root), wrappers["prolog.sh"], wrappers["epilog.sh"])
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_real_slurm_job_leaves_its_gpus_at_defaults(
    slurm: SlurmCluster, node: tuple[DaemonProcess, str], tmp_path: Path
) -> None:
    """A job under slurmd: the Prolog clears what was left, the Epilog undoes the job's changes."""
    daemon, _ = node
    change_gpus(daemon, [0], 400_000)  # left over by an earlier job whose Epilog never ran
    change_gpus(daemon, [3], 250_000)  # not this job's GPU: must stay as it is
    out = tmp_path / "out"
    out.mkdir()
    job = tmp_path / "job.sh"
    job.write_text(JOB)
    job.chmod(0o755)
    env = {"ZEUSCTL": ZEUSCTL, "ZEUSD_SOCK_PATH": daemon.socket_path or "", "OUT": str(out)}
    slurm.run(
        "sbatch",
        "--wait",
        "--gres=gpu:2",
        f"--output={out / 'job.out'}",
        f"--chdir={tmp_path}",
        str(job),
        env=env,
    )
    slurm.wait_idle()
    assert (out / "job.out").read_text().splitlines()[0] == "gpus=0,1"
    at_start = json.loads((out / "at_start.json").read_text())
    assert at_start["0"] == {"power_limit_mw": DEFAULT_MW}, "the Prolog did not reset GPU 0"
    assert json.loads((out / "locks_at_start.json").read_text())["0"] == NO_LOCKS
    in_job = json.loads((out / "in_job.json").read_text())
    assert in_job["0"] == in_job["1"] == {"power_limit_mw": 300_000}
    state = gpu_state(daemon)
    assert state[0] == (DEFAULT_MW, NO_LOCKS)
    assert state[1] == (DEFAULT_MW, NO_LOCKS)
    assert state[2] == (DEFAULT_MW, NO_LOCKS)
    assert state[3][0] == 250_000
    assert state[3][1]["gpu_locked_clocks"] == LOCK
    assert slurm.node_state() == "idle"
    log = (tmp_path / "scripts.log").read_text()
    assert "(prolog): GPUs 0,1 back to default" in log
    assert "(epilog): GPUs 0,1 back to default" in log
