"""Lanes in the real ``zeusd`` process: batches, one thread, a hung GPU at stop, forced stops."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import time
from collections.abc import Iterator

import pytest

from process_helpers import (
    lines,
    parse_line,
    request,
    result_of,
    running_daemon,
    short_tempdir,
    start_daemon,
    write_sim_config,
)

pytestmark = pytest.mark.process


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sock(directory: str) -> str:
    return os.path.join(directory, "zeusd.sock")


def test_batch_on_a_slow_gpu_does_not_stall_another_client(tmp_dir: str) -> None:
    """A batch [GPU 0 (3 s calls), GPU 1]: another client's GPU 1 read is answered at once."""
    config = write_sim_config(tmp_dir, "[[gpu]]\nlatency_ms = 3000\n[[gpu]]\n")
    with running_daemon("--sim-config", config, socket_path=_sock(tmp_dir)) as daemon:  # noqa: SIM117
        with daemon.connect(timeout=10) as batcher, daemon.connect(timeout=10) as other:
            batch = [request("gpu.get_power_limit", n, gpu_ids=[n]) for n in (0, 1)]
            batcher.send(batch)
            time.sleep(0.2)
            start = time.monotonic()
            assert "1" in result_of(other.call("gpu.get_power_limit", gpu_ids=[1]))
            waited = time.monotonic() - start
            assert sorted(r["id"] for r in batcher.read()) == [0, 1]
    assert waited < 1.5, f"GPU 1 waited {waited:.2f} s behind GPU 0's 3 s call"


def _alternating_median(daemon_args: tuple[str, ...], directory: str, name: str) -> float:
    path = os.path.join(directory, name)
    with running_daemon(*daemon_args, socket_path=path) as daemon, daemon.connect() as conn:
        samples = []
        for n in range(300):
            start = time.perf_counter()
            result_of(conn.call("gpu.get_power_limit", gpu_ids=[n % 2]))
            samples.append(time.perf_counter() - start)
    return statistics.median(samples[50:])


def test_one_thread_alternating_gpus_costs_no_linger(tmp_dir: str) -> None:
    """With --num-workers 1, alternating 2 GPUs is within 4x of --num-workers 2 (was 16x)."""
    one = _alternating_median(("--sim-gpus", "2", "--num-workers", "1"), tmp_dir, "a.sock")
    two = _alternating_median(("--sim-gpus", "2", "--num-workers", "2"), tmp_dir, "b.sock")
    assert one < 4 * two, f"1 worker {one * 1e6:.0f} us, 2 workers {two * 1e6:.0f} us"


def test_hung_gpu_at_sigterm_does_not_cancel_other_restores(tmp_dir: str) -> None:
    """--restore-on-exit with GPU 3 busy past the grace: GPUs 0 and 2 are restored anyway."""
    config = write_sim_config(tmp_dir, "[[gpu]]\n[[gpu]]\n[[gpu]]\n[[gpu]]\nlatency_ms = 1500\n")
    daemon = start_daemon("--sim-config", config, "--restore-on-exit", socket_path=_sock(tmp_dir))
    try:
        with daemon.connect(timeout=20) as conn:
            result_of(conn.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=300_000))
            result_of(
                conn.call(
                    "gpu.set_gpu_locked_clocks", gpu_ids=[2], min_clock_mhz=900, max_clock_mhz=1200
                )
            )
            result_of(conn.call("gpu.set_power_limit", gpu_ids=[3], power_limit_mw=400_000))
            # 8 calls of 1.5 s on GPU 3 (kinds alternate, so they cannot share a call).
            kinds = ("gpu.get_power_limit", "gpu.get_power")
            conn.send(*(request(kinds[n % 2], n, gpu_ids=[3]) for n in range(8)))
            time.sleep(0.2)
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.wait_for_log(r"GPU 0: power_limit restored to 700000 \(daemon exiting\)", 3)
            daemon.wait_for_log(r"GPU 2: gpu_locked_clocks restored", 3)
            assert time.monotonic() - started < 3, "restores of idle GPUs waited for GPU 3"
            replies = [parse_line(conn.read_line()) for _ in range(8)]
        code = daemon.proc.wait(20)
    finally:
        daemon.stop()
    assert code == 0, daemon.log
    assert {r["id"] for r in replies} == set(range(8))  # every request read is answered
    stopped = [r for r in replies if "error" in r]
    assert stopped
    assert all(r["error"]["code"] == -32001 for r in stopped)
    detail = stopped[0]["error"]["data"]["errors"]["3"]
    assert detail["nvml_error"] == "NVML_ERROR_UNINITIALIZED"
    assert detail["message"].startswith("not run")
    assert "GPU 3: restore at exit abandoned" in daemon.log
    assert "power_limit not restored" in daemon.log


def test_forced_stop_answers_every_request_read(tmp_dir: str) -> None:
    """A second SIGTERM with batches queued: each request is answered; nothing is dropped."""
    config = write_sim_config(tmp_dir, "[[gpu]]\nlatency_ms = 2000\n[[gpu]]\n")
    daemon = start_daemon("--sim-config", config, socket_path=_sock(tmp_dir))
    try:
        with daemon.connect(timeout=10) as conn:
            batch = [
                request(m, f"{m}-{n}", gpu_ids=[n])
                for n in (0, 1)
                for m in ("gpu.get_power", "gpu.get_power_limit")
            ]
            conn.send_raw(lines(batch, batch, request("gpu.get_power", "single", gpu_ids=[0])))
            time.sleep(0.3)
            daemon.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            daemon.proc.send_signal(signal.SIGTERM)
            replies = [parse_line(conn.read_line()) for _ in range(3)]
        code = daemon.proc.wait(10)
    finally:
        daemon.stop()
    assert code == 0, daemon.log
    answered = sorted(str(m["id"]) for r in replies for m in (r if isinstance(r, list) else [r]))
    assert answered.count("single") == 1
    assert len(answered) == 9
    assert "never awaited" not in daemon.log
