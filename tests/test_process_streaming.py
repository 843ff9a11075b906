"""The real ``zeusd`` process: power streams, cpu-read over a fake RAPL tree, --enable."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fake_rapl import make_tree
from process_helpers import (
    SOCAT,
    DaemonProcess,
    LineConnection,
    error_of,
    lines,
    parse_output,
    request,
    run_zeusd,
    running_daemon,
    short_tempdir,
    start_daemon,
)

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def tree_dir() -> Iterator[str]:
    d = short_tempdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def rapl_daemon(tree_dir: str) -> Iterator[DaemonProcess]:
    """8 simulated GPUs and two RAPL CPUs (one with DRAM) from a fake powercap tree."""
    root = make_tree(os.path.join(tree_dir, "powercap"), [True, False])
    with running_daemon(
        f"--rapl-root={root}", socket_path=os.path.join(tree_dir, "z.sock"), sim_gpus=8
    ) as daemon:
        yield daemon


def collect(conn: LineConnection, count: int) -> list[Any]:
    return [conn.read() for _ in range(count)]


def test_discover_lists_rapl_cpus(rapl_daemon: DaemonProcess) -> None:
    """discover reports the CPUs and cpu-read among the enabled groups."""
    with rapl_daemon.connect() as conn:
        result = conn.result("discover")
    assert result["cpus"] == [{"id": 0, "dram_available": True}, {"id": 1, "dram_available": False}]
    assert result["enabled_api_groups"] == ["gpu-control", "gpu-read", "cpu-read"]


def test_gpu_stream_then_unsubscribe(rapl_daemon: DaemonProcess) -> None:
    """Eight GPUs stream together; after unsubscribe's reply, only replies follow."""
    with rapl_daemon.connect() as conn:
        sub = conn.result("gpu.subscribe_power", interval_ms=20)["subscription"]
        notes = collect(conn, 10)
        assert all(n["method"] == "gpu.power" for n in notes)
        assert all(n["params"]["subscription"] == sub for n in notes)
        assert any(len(n["params"]["power_mw"]) == 8 for n in notes)
        conn.send(request("unsubscribe", "u", subscription=sub))
        while (reply := conn.read()).get("id") != "u":
            assert reply["method"] == "gpu.power"
        assert reply["result"] is True
        assert conn.result("time")["timestamp_ms"] > 0  # the next line is a reply, not a note


def test_cpu_energy_and_stream(rapl_daemon: DaemonProcess) -> None:
    """cpu.get_cumulative_energy and cpu.power notifications over the socket."""
    with rapl_daemon.connect() as conn:
        energy = conn.result("cpu.get_cumulative_energy", cpu_ids=[0], dram=False)
        assert energy == {"0": {"cpu_energy_uj": 1_000_000, "dram_energy_uj": None}}
        power = conn.result("cpu.get_power")
        assert power["power_mw"]["0"] == {"cpu_mw": 0, "dram_mw": 0}
        sub = conn.result("cpu.subscribe_power", cpu_ids=[1], interval_ms=10)["subscription"]
        notes = collect(conn, 3)
        assert all(n["params"] == {**n["params"], "subscription": sub} for n in notes)
        assert notes[-1]["params"]["power_mw"] == {"1": {"cpu_mw": 0, "dram_mw": None}}
        error = error_of(conn.call("cpu.get_power", cpu_ids=[7]), -32602)
        assert "unknown CPU 7" in error["data"]["reason"]


def test_socat_keeps_streaming_after_its_stdin_ends(rapl_daemon: DaemonProcess) -> None:
    """socat with one subscribe line on stdin gets the reply, then notifications, until killed."""
    with subprocess.Popen(
        [SOCAT, "-", rapl_daemon.socat_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as socat:
        assert socat.stdin is not None
        socat.stdin.write(lines(request("gpu.subscribe_power", 1, gpu_ids=[3], interval_ms=50)))
        socat.stdin.close()  # half-close: the stream goes on while socat still reads
        time.sleep(1.0)
        socat.terminate()
        assert socat.stdout is not None
        out = socat.stdout.read()
        socat.wait(timeout=10)
    replies = parse_output(out[: out.rfind(b"\n") + 1])
    assert replies[0]["id"] == 1
    assert len(replies) >= 6
    assert all(set(r["params"]["power_mw"]) == {"3"} for r in replies[1:])


def test_enable_restricts_groups(tree_dir: str) -> None:
    """--enable gpu-read: a write is -32004 and discover lists only gpu-read."""
    path = os.path.join(tree_dir, "r.sock")
    with running_daemon("--enable=gpu-read", socket_path=path) as daemon, daemon.connect() as conn:
        error_of(conn.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000), -32004)
        assert conn.result("discover")["enabled_api_groups"] == ["gpu-read"]


def test_enable_cpu_read_without_rapl_fails_with_the_path(tree_dir: str) -> None:
    """Asking for cpu-read on a node without the RAPL tree is a startup error naming it."""
    missing = os.path.join(tree_dir, "no-such-powercap")
    done = run_zeusd(
        "--gpu-backend=sim",
        f"--socket-path={os.path.join(tree_dir, 'x.sock')}",
        "--enable=gpu-read,cpu-read",
        f"--rapl-root={missing}",
    )
    assert done.returncode == 1
    assert f"cpu-read: no RAPL powercap tree at {missing}" in done.stderr
    assert not os.path.exists(os.path.join(tree_dir, "x.sock"))


def test_sigterm_ends_streams_promptly(tree_dir: str) -> None:
    """A daemon with live subscribers stops cleanly on SIGTERM and closes their connections."""
    path = os.path.join(tree_dir, "t.sock")
    daemon = start_daemon(socket_path=path)
    try:
        with daemon.connect() as conn:
            conn.result("gpu.subscribe_power", interval_ms=10)
            collect(conn, 3)
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 5  # not the 10 s drain grace
            while conn.read_line():  # the rest of the stream, then EOF
                pass
    finally:
        daemon.stop()
    assert "forced" not in daemon.log
    assert "did not finish" not in daemon.log
