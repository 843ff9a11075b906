"""The real ``zeusd`` killed with SIGKILL and started again on the same --state-dir and
--sim-state: what had to be restored is, what had to stay does (PROTOCOL section 8)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from process_helpers import (
    DaemonProcess,
    LineConnection,
    request,
    result_of,
    run_zeusd,
    running_daemon,
    short_tempdir,
    start_daemon,
    write_sim_config,
)

pytestmark = pytest.mark.process

DEFAULT_MW = 700_000


@attrs.frozen
class Paths:
    root: str

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "zeusd.sock")

    @property
    def state(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def sim_state(self) -> str:
        return os.path.join(self.root, "gpus.json")

    def flags(self, *extra: str) -> list[str]:
        return ["--state-dir", self.state, "--sim-state", self.sim_state, *extra]

    def records(self) -> list[str]:
        return sorted(n for n in os.listdir(self.state) if n.endswith(".json"))

    def record(self, name: str) -> dict[str, Any]:
        with open(os.path.join(self.state, name), encoding="utf-8") as f:
            body: dict[str, Any] = json.load(f)
        return body

    def gpus(self) -> list[dict[str, Any]]:
        """The simulated GPUs' settings as the sim state file has them, in index order."""
        with open(self.sim_state, encoding="utf-8") as f:
            gpus = json.load(f)["gpus"]
        return [gpus[uuid] for uuid in sorted(gpus, key=_UUID_INDEX.__getitem__)]


#: GPU UUID -> index, as the daemons' discover reported them.
_UUID_INDEX: dict[str, int] = {}


@pytest.fixture
def paths() -> Iterator[Paths]:
    root = short_tempdir()
    yield Paths(root)
    shutil.rmtree(root, ignore_errors=True)


def _start(paths: Paths, *extra: str) -> DaemonProcess:
    daemon = start_daemon(*paths.flags(*extra), socket_path=paths.socket)
    with daemon.connect() as probe:
        for gpu in probe.result("discover")["gpus"]:
            _UUID_INDEX[gpu["uuid"]] = gpu["id"]
    return daemon


def _restoring(daemon: DaemonProcess, restore: bool = True) -> LineConnection:
    conn = daemon.connect()
    assert result_of(conn.call("session.set_restore_on_close", enabled=restore)) == {
        "restore_on_close": restore
    }
    return conn


def _limits(daemon: DaemonProcess) -> dict[str, int]:
    with daemon.connect() as conn:
        reply = conn.result("gpu.get_power_limit")
    return {gpu: value["power_limit_mw"] for gpu, value in reply.items()}


def _kill(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL


def test_sigkill_mid_session_then_restart(paths: Paths) -> None:
    """Killed with restore-on-close and keep sessions open: the restart restores the
    restore-on-close settings (logged, audited) and keeps the others."""
    daemon = _start(paths)
    restore = _restoring(daemon)
    keep = _restoring(daemon, restore=False)
    clocks = {"min_clock_mhz": 900, "max_clock_mhz": 1200}
    result_of(restore.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000))
    result_of(restore.call("gpu.set_persistence_mode", gpu_ids=[2], enabled=True))
    result_of(restore.call("gpu.set_gpu_locked_clocks", gpu_ids=[3], **clocks))
    result_of(keep.call("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=250_000))
    assert paths.records() == [
        "gpu0.power_limit.json",
        "gpu1.power_limit.json",
        "gpu2.persistence_mode.json",
        "gpu3.gpu_locked_clocks.json",
    ]
    _kill(daemon)
    restore.close()
    keep.close()
    before = paths.gpus()
    assert [g["power_limit_mw"] for g in before[:2]] == [300_000, 250_000]
    assert before[2]["persistence_mode"] == 1
    assert before[3]["gpu_locked_clocks"] is not None

    again = _start(paths, "--log-format", "json")
    try:
        assert _limits(again) == {"0": DEFAULT_MW, "1": 250_000, "2": DEFAULT_MW, "3": DEFAULT_MW}
        after = paths.gpus()
        assert after[2]["persistence_mode"] == 0
        assert after[3]["gpu_locked_clocks"] is None
        assert paths.records() == []
        entries = [json.loads(line) for line in again.log.splitlines() if line.strip()]
        audits = [e["audit"] for e in entries if "audit" in e]
        assert {a["method"] for a in audits} == {"restore_after_unclean_exit"}
        restored = sorted((a["params"]["gpu_id"], a["params"]["setting"]) for a in audits)
        assert restored == [(0, "power_limit"), (2, "persistence_mode"), (3, "gpu_locked_clocks")]
        assert all(a["status"] == "ok" for a in audits)
        assert any("GPU 1: power_limit kept as" in e["message"] for e in entries)
    finally:
        assert again.stop() == 0
    assert paths.records() == []  # a clean stop leaves none


def test_restore_chain_survives_a_crash(paths: Paths) -> None:
    """A sets 300 W, B 400 W (both restore-on-close), A closes, the daemon is killed: the
    restart puts back the original 700 W, not A's 300 W."""
    daemon = _start(paths)
    a, b = _restoring(daemon), _restoring(daemon)
    result_of(a.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000))
    result_of(b.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=400_000))
    a.close()
    daemon.wait_for_log("not restored yet")
    assert paths.record("gpu0.power_limit.json")["before"] == DEFAULT_MW
    _kill(daemon)
    b.close()
    with _running(paths) as again:
        assert _limits(again)["0"] == DEFAULT_MW


def test_sigkill_between_the_record_and_the_nvml_write(paths: Paths) -> None:
    """Killed after the record is on disk but before NVML applied the write: the restart
    still knows the value before (650 W, set earlier and kept) and puts it back."""
    with _running(paths) as first:
        keep = first.connect()
        result_of(keep.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=650_000))
        keep.close()
    assert paths.records() == []
    slow = write_sim_config(paths.root, "[[gpu]]\nlatency_ms = 4000\n[[gpu]]\n")
    daemon = start_daemon(*paths.flags("--sim-config", slow), socket_path=paths.socket)
    conn = _restoring(daemon)
    # The lane reads the value before (4 s), records it, then calls NVML (4 s more).
    conn.send(request("gpu.set_power_limit", "w", gpu_ids=[0], power_limit_mw=300_000))
    record_path = os.path.join(paths.state, "gpu0.power_limit.json")
    deadline = time.monotonic() + 30
    while not os.path.exists(record_path):
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.01)
    _kill(daemon)
    conn.close()
    record = paths.record("gpu0.power_limit.json")
    assert (record["restore"], record["before"]) == (True, 650_000)
    with open(paths.sim_state, encoding="utf-8") as f:
        saved = json.load(f)["gpus"]
    assert sorted(g["power_limit_mw"] for g in saved.values()) == [650_000, DEFAULT_MW]

    with _running(paths, "--sim-gpus", "2") as again:
        assert _limits(again)["0"] == 650_000
        again.wait_for_log(r"GPU 0: power_limit restored to 650000")
        assert paths.records() == []


def test_garbage_in_the_state_dir_is_set_aside(paths: Paths) -> None:
    """Corrupt records are moved aside, foreign files left alone; the daemon starts and serves."""
    os.mkdir(paths.state, 0o700)
    with open(os.path.join(paths.state, "gpu0.power_limit.json"), "wb") as f:
        f.write(os.urandom(300))
    with open(os.path.join(paths.state, "hello.txt"), "w", encoding="utf-8") as f:
        f.write("not a record\n")
    os.symlink("/etc/shadow", os.path.join(paths.state, "gpu1.power_limit.json"))
    with _running(paths) as daemon:
        assert daemon.log.count("set aside") == 2
        assert "left alone 1 entries that are not restore records ('hello.txt')" in daemon.log
        assert _limits(daemon)["0"] == DEFAULT_MW
    assert len(os.listdir(os.path.join(paths.state, "set-aside"))) == 2
    with open(os.path.join(paths.state, "hello.txt"), encoding="utf-8") as f:
        assert f.read() == "not a record\n"
    assert paths.records() == []


def test_state_dir_others_can_write_is_refused(paths: Paths) -> None:
    """A state dir that others can write is refused at start, saying why."""
    os.mkdir(paths.state)
    os.chmod(paths.state, 0o777)
    done = run_zeusd(
        "--gpu-backend", "sim", *paths.flags(), "--socket-path", paths.socket, timeout=30
    )
    assert done.returncode == 1
    assert "writable by others" in done.stderr


def test_two_daemons_cannot_share_a_state_dir(paths: Paths) -> None:
    """A second daemon on the same state dir refuses to start (it would undo the first's)."""
    with _running(paths):
        done = run_zeusd(
            "--gpu-backend",
            "sim",
            "--state-dir",
            paths.state,
            "--socket-path",
            os.path.join(paths.root, "other.sock"),
            timeout=30,
        )
    assert done.returncode == 1
    assert "in use by another zeusd" in done.stderr


def _running(paths: Paths, *extra: str) -> Any:
    return running_daemon(*paths.flags(*extra), socket_path=paths.socket)


def test_restore_on_exit_promise_survives_a_crash(paths: Paths) -> None:
    """With --restore-on-exit, even a keep session's change is put back after a SIGKILL."""
    daemon = _start(paths, "--restore-on-exit")
    keep = daemon.connect()
    result_of(keep.call("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=250_000))
    keep.close()
    assert paths.record("gpu1.power_limit.json")["reason"] == "--restore-on-exit"
    _kill(daemon)
    with _running(paths) as again:
        assert _limits(again)["1"] == DEFAULT_MW


def test_state_dir_under_a_directory_others_can_write_is_refused(paths: Paths) -> None:
    """A state dir inside a directory others may write (and so swap it) is refused."""
    shared = os.path.join(paths.root, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    state = os.path.join(shared, "state")
    done = run_zeusd(
        "--gpu-backend", "sim", "--state-dir", state, "--socket-path", paths.socket, timeout=30
    )
    assert done.returncode == 1
    assert f"--state-dir {state}: refusing state dir: directory {shared} is writable" in (
        done.stderr
    )
    assert not os.path.exists(state)
