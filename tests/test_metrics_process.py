"""The installed zeusd scraped by a real Prometheus server (Debian's ``prometheus``), with
and without a token, and by curl with a GPU that answers in seconds.

Prometheus is started on a free port with a temporary config and data dir, scrapes every
second, and the tests ask its HTTP API for the series, as a dashboard would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from process_helpers import (
    DaemonProcess,
    issue_token,
    running_daemon,
    start_daemon,
    write_sim_config,
    write_token_key,
)

pytestmark = pytest.mark.process

PROMETHEUS = shutil.which("prometheus")
CURL = shutil.which("curl")
#: Prometheus needs a few seconds to start, then one scrape interval for the first samples.
SERIES_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@contextmanager
def running_prometheus(jobs: Sequence[dict[str, Any]]) -> Iterator[str]:
    """A Prometheus scraping *jobs* (scrape_configs entries) every second; yields its URL."""
    assert PROMETHEUS, "prometheus is installed by scripts/test"
    directory = tempfile.mkdtemp(prefix="zd-prom-")
    config = os.path.join(directory, "prometheus.yml")
    settings = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": list(jobs),
    }
    with open(config, "w", encoding="utf-8") as f:
        json.dump(settings, f)  # JSON is YAML
    base = f"http://127.0.0.1:{free_port()}"
    log_path = os.path.join(directory, "prometheus.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(directory, 'data')}",
                f"--web.listen-address={base.removeprefix('http://')}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + SERIES_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, _log(log_path)
            assert time.monotonic() < deadline, "Prometheus not ready\n" + _log(log_path)
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _log(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-4000:]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector *promql* evaluates to now."""
    reply = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def wait_for(base: str, promql: str, done: Any) -> list[dict[str, Any]]:
    """Query until *done(result)* holds; fail with the targets' health otherwise."""
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while True:
        result = query(base, promql)
        if done(result):
            return result
        if time.monotonic() > deadline:
            targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
            health = [(t["labels"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"{promql}: {result}; targets: {health}")
        time.sleep(0.25)


def discovered(daemon: DaemonProcess) -> list[dict[str, Any]]:
    with daemon.connect() as conn:
        gpus: list[dict[str, Any]] = conn.result("discover")["gpus"]
        return gpus


def gpu_labels(result: list[dict[str, Any]], job: str) -> set[tuple[str, str, str]]:
    return {
        (r["metric"]["gpu"], r["metric"]["uuid"], r["metric"]["name"])
        for r in result
        if r["metric"]["job"] == job
    }


def expected(gpus: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(str(g["id"]), g["uuid"], g["name"]) for g in gpus}


def test_prometheus_scrapes_every_simulated_gpu() -> None:
    """Prometheus, scraping zeusd over TCP every second, has each GPU's power series with
    discover's id, uuid and name, and the daemon's own counters."""
    with running_daemon("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", sim_gpus=3) as d:
        gpus = discovered(d)
        job = {"job_name": "zeusd", "static_configs": [{"targets": [f"127.0.0.1:{d.tcp_port}"]}]}
        with running_prometheus([job]) as prometheus:
            result = wait_for(
                prometheus,
                "zeusd_gpu_power_watts",
                lambda r: gpu_labels(r, "zeusd") == expected(gpus),
            )
            assert all(0 < float(r["value"][1]) < 1000 for r in result)
            limits = query(prometheus, "zeusd_gpu_power_limit_default_watts")
            assert {float(r["value"][1]) for r in limits} == {700.0}
            # The daemon's own discover call above was counted, and Prometheus saw it.
            calls = query(prometheus, 'zeusd_requests_total{method="discover",code="0"}')
            assert [float(r["value"][1]) for r in calls] == [1.0]


def test_prometheus_scrapes_with_a_bearer_token(tmp_path: Any) -> None:
    """With --token-key, a scrape_config whose authorization carries a gpu-read token gets
    the series; one whose token lacks gpu-read is refused (the target is down)."""
    key = write_token_key(str(tmp_path))
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", key)
    with running_daemon(*args, sim_gpus=2) as d:
        gpus = discovered(d)
        target = {"targets": [f"127.0.0.1:{d.tcp_port}"]}
        jobs = [
            {
                "job_name": "reader",
                "static_configs": [target],
                "authorization": {"credentials": issue_token(key, "gpu-read", "prometheus")},
            },
            {
                "job_name": "writer-only",
                "static_configs": [target],
                "authorization": {"credentials": issue_token(key, "gpu-control", "prometheus")},
            },
        ]
        with running_prometheus(jobs) as prometheus:
            wait_for(
                prometheus,
                "zeusd_gpu_power_watts",
                lambda r: gpu_labels(r, "reader") == expected(gpus),
            )
            down = wait_for(prometheus, 'up{job="writer-only"}', lambda r: bool(r))
            assert [r["value"][1] for r in down] == ["0"]
            assert gpu_labels(query(prometheus, "zeusd_gpu_power_watts"), "writer-only") == set()


def test_a_slow_gpu_never_slows_a_scrape(tmp_path: Any) -> None:
    """A GPU whose every driver call takes 5 s: each scrape answers in under a second, with
    the other GPU's series (the slow one's first reading is seconds away)."""
    assert CURL, "curl is installed by scripts/test"
    config = write_sim_config(
        str(tmp_path), "[[gpu]]\n[[gpu]]\nname = 'Slow GPU'\nlatency_ms = 5000\n"
    )
    # Workers to spare: the slow GPU holds one for 15 s (its three calls).
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--num-workers", "4")
    d = start_daemon(*args, f"--sim-config={config}")
    try:
        url = f"http://127.0.0.1:{d.tcp_port}/metrics"
        for _ in range(3):
            began = time.monotonic()
            done = subprocess.run(
                [CURL, "-sS", "--max-time", "5", url],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            assert time.monotonic() - began < 1.0
            power = [
                line for line in done.stdout.splitlines() if line.startswith("zeusd_gpu_power")
            ]
            assert [line.split("{")[0] for line in power] == [
                "zeusd_gpu_power_watts",
                "zeusd_gpu_power_limit_watts",
                "zeusd_gpu_power_limit_default_watts",
            ]
            assert all('gpu="0"' in line for line in power)
            time.sleep(0.5)
    finally:
        # The slow GPU's read would hold a drain for seconds: a second SIGTERM cuts it.
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_log("draining")
        d.stop()
