"""GET /metrics on an in-process daemon, scraped with curl: counts, access, a hung GPU."""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd import tokens
from zeusd.sim import default_sim_gpus

CURL = shutil.which("curl")
KEY = b"0123456789abcdef0123456789abcdef"


async def curl(*args: str) -> tuple[int, str, str]:
    """(status, content type, body) of one curl request."""
    assert CURL, "curl is installed by scripts/test"
    done = await trio.run_process(
        [CURL, "-sS", "--max-time", "10", "-w", "\n%{http_code} %{content_type}", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, tail = done.stdout.decode().rpartition("\n")
    status, _, content_type = tail.partition(" ")
    return int(status), content_type, body


async def scrape(daemon: SimDaemon, *args: str) -> dict[str, list[Any]]:
    """The daemon's /metrics over its Unix socket, parsed: samples by name."""
    status, content_type, body = await curl(
        "--unix-socket", daemon.path, *args, "http://localhost/metrics"
    )
    assert status == 200, body
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def values(samples: dict[str, list[Any]], name: str, *labels: str) -> dict[Any, float]:
    found = {}
    for sample in samples.get(name, []):
        key = tuple(sample.labels[label] for label in labels)
        found[key[0] if len(key) == 1 else key] = sample.value
    return found


async def test_gpu_series_carry_the_discovered_ids(daemon: SimDaemon, client: LineClient) -> None:
    """Every GPU has its four series, labelled with discover's id, uuid and name."""
    gpus = (await client.result("discover"))["gpus"]
    samples = await scrape(daemon)
    for name in (
        "zeusd_gpu_power_watts",
        "zeusd_gpu_energy_joules_total",
        "zeusd_gpu_power_limit_watts",
        "zeusd_gpu_power_limit_default_watts",
    ):
        got = {(s.labels["gpu"], s.labels["uuid"], s.labels["name"]) for s in samples[name]}
        assert got == {(str(g["id"]), g["uuid"], g["name"]) for g in gpus}, name
    limits = values(samples, "zeusd_gpu_power_limit_watts", "gpu")
    assert limits == {str(g["id"]): 700.0 for g in gpus}
    power = await client.result("gpu.get_power")
    for gpu, watts in values(samples, "zeusd_gpu_power_watts", "gpu").items():
        assert 0 < watts < 1000
        assert abs(watts - power["power_mw"][gpu] / 1000) < 700


async def test_calls_writes_and_connections_are_counted(
    daemon: SimDaemon, client: LineClient
) -> None:
    """JSON-RPC and HTTP calls by method and code, writes by GPU, open connections."""
    await client.result("gpu.set_power_limit", {"gpu_ids": [0, 2], "power_limit_mw": 300_000})
    await client.result("gpu.get_power_limit")
    await client.result("gpu.get_power_limit")
    bad = await client.call("gpu.set_power_limit", {"gpu_ids": [0], "power_limit_mw": 1})
    assert bad["error"]["code"] == -32602
    status, _, _ = await curl("--unix-socket", daemon.path, "http://localhost/gpu/get_power")
    assert status == 200
    samples = await scrape(daemon)
    requests = values(samples, "zeusd_requests_total", "method", "code")
    assert requests["gpu.set_power_limit", "0"] == 1
    assert requests["gpu.set_power_limit", "-32602"] == 1
    assert requests["gpu.get_power_limit", "0"] == 2
    assert requests["gpu.get_power", "0"] == 1
    counts = values(samples, "zeusd_request_duration_seconds_count", "method")
    assert counts["gpu.get_power_limit"] == 2
    writes = values(samples, "zeusd_gpu_writes_total", "gpu", "method")
    assert writes == {("0", "gpu.set_power_limit"): 1, ("2", "gpu.set_power_limit"): 1}
    # This client's connection, and the scrape's own.
    assert values(samples, "zeusd_connections", "dialect") == {"jsonrpc": 1, "http": 1}
    limits = values(samples, "zeusd_gpu_power_limit_watts", "gpu")
    assert limits["1"] == 700.0
    # The poller reads once a second: the new limit shows within two.
    with trio.fail_after(5):
        while values(await scrape(daemon), "zeusd_gpu_power_limit_watts", "gpu")["0"] != 300.0:
            await trio.sleep(0.2)


async def test_a_write_that_fails_on_one_gpu_counts_the_others(
    daemon: SimDaemon, client: LineClient
) -> None:
    """-32001 for GPU 1: the call counts under that code, the write only on GPU 0."""
    daemon.sim.devices[1].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    reply = await client.call("gpu.set_power_limit", {"gpu_ids": [0, 1], "power_limit_mw": 300_000})
    assert reply["error"]["data"]["succeeded"] == [0]
    samples = await scrape(daemon)
    assert values(samples, "zeusd_requests_total", "method", "code") == {
        ("gpu.set_power_limit", "-32001"): 1
    }
    assert values(samples, "zeusd_gpu_writes_total", "gpu", "method") == {
        ("0", "gpu.set_power_limit"): 1
    }


async def test_a_restore_on_close_is_counted(daemon: SimDaemon) -> None:
    """A connection that asked for restore-on-close closes: one restore per setting."""
    writer = await daemon.connect()
    await writer.result("session.set_restore_on_close", {"enabled": True})
    await writer.result("gpu.set_power_limit", {"gpu_ids": [1], "power_limit_mw": 400_000})
    before = (await scrape(daemon))["zeusd_restores_total"][0].value
    assert before == 0
    await writer.aclose()
    with trio.fail_after(5):
        while (await scrape(daemon))["zeusd_restores_total"][0].value != 1:
            await trio.sleep(0.05)
    assert daemon.sim.devices[1].power_limit_mw == 700_000


async def test_a_hung_gpu_is_scraped_within_a_second(daemon: SimDaemon) -> None:
    """GPU 3 blocks in the driver: each scrape answers in under 1 s, with the other GPUs."""
    held = threading.Event()
    daemon.sim.devices[3].hold = held
    try:
        for _ in range(3):
            began = time.monotonic()
            samples = await scrape(daemon)
            assert time.monotonic() - began < 1.0
            assert set(values(samples, "zeusd_gpu_power_watts", "gpu")) == {"0", "1", "2"}
            await trio.sleep(0.3)
    finally:
        held.set()


async def test_a_bad_query_is_400(daemon: SimDaemon) -> None:
    """/metrics takes no params, as every route refuses a key it does not know."""
    status, _, body = await curl("--unix-socket", daemon.path, "http://localhost/metrics?x=1")
    assert status == 400
    assert '"param":"x"' in body


async def test_no_metrics_without_gpu_read(nursery: trio.Nursery, sock_dir: str) -> None:
    """With gpu-read disabled, /metrics is 404 (-32004), as the gpu-read routes are."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(2), sock_dir, enable=("gpu-control",))
    status, _, body = await curl("--unix-socket", daemon.path, "http://localhost/metrics")
    assert status == 404
    assert "-32004" in body
    daemon.running.server.stop(force=True)


@pytest.mark.parametrize(
    ("scopes", "status"),
    [(None, 401), (["gpu-control"], 403), (["gpu-read"], 200), (["gpu-control", "gpu-read"], 200)],
)
async def test_over_tcp_a_gpu_read_token_is_needed(
    nursery: trio.Nursery, sock_dir: str, scopes: list[str] | None, status: int
) -> None:
    """Where tokens are required: none is 401, one without gpu-read 403, gpu-read 200."""
    daemon = await start_sim_daemon(
        nursery, default_sim_gpus(2), sock_dir, mode="tcp", tcp_port=0, token_key=KEY
    )
    url = f"http://127.0.0.1:{daemon.running.address.rsplit(':', 1)[1]}/metrics"
    auth = (
        []
        if scopes is None
        else ["-H", f"Authorization: Bearer {tokens.issue(KEY, 'p', scopes, 60)}"]
    )
    got, _, body = await curl(*auth, url)
    assert got == status, body
    if status == 200:
        assert "zeusd_gpu_power_watts{" in body
    daemon.running.server.stop(force=True)
