"""The zeusd process on the real NVML backend. Needs an NVIDIA GPU and root; skipped elsewhere.

Every setting a test changes is read first straight from NVML and put back in a finally
block through NVML as well, so a failing daemon cannot leave a GPU altered.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.gpu

pynvml = pytest.importorskip("pynvml")


@pytest.fixture(scope="module")
def nvml() -> Iterator[Any]:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver here: {exc}")
    if os.geteuid() != 0:
        pytest.skip("the gpu tests change GPU settings and must run as root")
    yield pynvml
    pynvml.nvmlShutdown()


class Client:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.next_id = 0

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        response = json.loads(self.file.readline())
        assert response["id"] == self.next_id
        return response

    def result(self, method: str, **params: Any) -> Any:
        response = self.call(method, **params)
        assert "error" not in response, response
        return response["result"]


@pytest.fixture(scope="module")
def client(nvml: Any) -> Iterator[Client]:
    directory = tempfile.mkdtemp(prefix="zd-gpu-")
    path = os.path.join(directory, "zeusd.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeusd", "--gpu-backend", "nvml", "--socket-path", path],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            break
    else:
        pytest.fail(f"zeusd did not start (exit {proc.wait()})")
    c = Client(path)
    yield c
    c.sock.close()
    proc.terminate()
    assert proc.wait(timeout=15) == 0


def _handles(nvml: Any) -> list[Any]:
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]


def test_discover_matches_nvml(nvml: Any, client: Client) -> None:
    """discover reports the same GPUs, names, UUIDs and bus ids as NVML."""
    gpus = client.result("discover")["gpus"]
    handles = _handles(nvml)
    assert len(gpus) == len(handles)
    for gpu, handle in zip(gpus, handles, strict=True):
        assert gpu["name"] == nvml.nvmlDeviceGetName(handle)
        assert gpu["uuid"] == nvml.nvmlDeviceGetUUID(handle)
        assert gpu["pci_address"] == nvml.nvmlDeviceGetPciInfo(handle).busId


def test_reads_match_nvml(nvml: Any, client: Client) -> None:
    """Every gpu-read method agrees with a direct NVML read."""
    handle = _handles(nvml)[0]
    limit = client.result("gpu.get_power_limit", gpu_ids=[0])["0"]["power_limit_mw"]
    assert limit == nvml.nvmlDeviceGetPowerManagementLimit(handle)
    constraints = client.result("gpu.get_power_limit_constraints", gpu_ids=[0])["0"]
    low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    assert (constraints["min_power_limit_mw"], constraints["max_power_limit_mw"]) == (low, high)
    enabled = client.result("gpu.get_persistence_mode", gpu_ids=[0])["0"]["enabled"]
    assert enabled == (nvml.nvmlDeviceGetPersistenceMode(handle) == nvml.NVML_FEATURE_ENABLED)
    assert client.result("gpu.get_power", gpu_ids=[0])["power_mw"]["0"] > 0
    memory = client.result("gpu.get_supported_memory_clocks", gpu_ids=[0])["0"]
    assert memory["memory_clocks_mhz"] == nvml.nvmlDeviceGetSupportedMemoryClocks(handle)
    top = max(memory["memory_clocks_mhz"])
    graphics = client.result("gpu.get_supported_graphics_clocks", gpu_ids=[0])["0"]
    assert graphics["graphics_clocks_mhz"] == nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, top)


def http_get(path: str, target: str) -> bytes:
    """One HTTP/1.1 GET over the Unix socket at *path*; returns the body of a 200."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: zeusd\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_metrics_match_nvml(nvml: Any, client: Client) -> None:
    """/metrics has every GPU, by NVML's uuid and name, with NVML's limits in watts."""
    body = http_get(client.path, "/metrics").decode()
    samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
    for index, handle in enumerate(_handles(nvml)):
        mine = {s.name: s for s in samples if s.labels.get("gpu") == str(index)}
        labels = mine["zeusd_gpu_power_watts"].labels
        assert labels["uuid"] == nvml.nvmlDeviceGetUUID(handle)
        assert labels["name"] == nvml.nvmlDeviceGetName(handle)
        assert mine["zeusd_gpu_power_watts"].value > 0
        limit = nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000
        assert mine["zeusd_gpu_power_limit_watts"].value == limit
        default = nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000
        assert mine["zeusd_gpu_power_limit_default_watts"].value == default


def test_energy_counter_is_monotonic(client: Client) -> None:
    """Cumulative energy never decreases across reads."""
    readings = []
    for _ in range(5):
        readings.append(client.result("gpu.get_cumulative_energy", gpu_ids=[0])["0"]["energy_mj"])
        time.sleep(0.2)
    assert readings == sorted(readings)
    assert readings[-1] > readings[0]


def test_set_power_limit_takes_effect_and_is_restored(nvml: Any, client: Client) -> None:
    """A limit set through zeusd is what NVML reports; the original comes back afterwards."""
    handle = _handles(nvml)[0]
    original = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    target = (low + high) // 2 // 1000 * 1000
    try:
        assert client.result("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=target) == {
            "applied": [0]
        }
        assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == target
        client.result("gpu.reset_power_limit", gpu_ids=[0])
        default = nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
        assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == default
    finally:
        nvml.nvmlDeviceSetPowerManagementLimit(handle, original)


def test_persistence_mode_toggles_and_is_restored(nvml: Any, client: Client) -> None:
    """Persistence mode set through zeusd is what NVML reports."""
    handle = _handles(nvml)[0]
    original = nvml.nvmlDeviceGetPersistenceMode(handle)
    try:
        wanted = original != nvml.NVML_FEATURE_ENABLED
        client.result("gpu.set_persistence_mode", gpu_ids=[0], enabled=wanted)
        now = nvml.nvmlDeviceGetPersistenceMode(handle) == nvml.NVML_FEATURE_ENABLED
        assert now == wanted
    finally:
        nvml.nvmlDeviceSetPersistenceMode(handle, original)


def test_locked_clocks_apply_and_reset(nvml: Any, client: Client) -> None:
    """Locking graphics and memory clocks succeeds; the resets put the GPU back."""
    handle = _handles(nvml)[0]
    memory = max(nvml.nvmlDeviceGetSupportedMemoryClocks(handle))
    graphics = nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, memory)
    try:
        result = client.result(
            "gpu.set_gpu_locked_clocks",
            gpu_ids=[0],
            min_clock_mhz=min(graphics),
            max_clock_mhz=max(graphics),
        )
        assert result == {"applied": [0]}
        result = client.result(
            "gpu.set_mem_locked_clocks", gpu_ids=[0], min_clock_mhz=memory, max_clock_mhz=memory
        )
        assert result == {"applied": [0]}
        assert client.result("gpu.reset_locked_clocks", gpu_ids=[0]) == {"applied": [0]}
    finally:
        nvml.nvmlDeviceResetGpuLockedClocks(handle)
        nvml.nvmlDeviceResetMemoryLockedClocks(handle)


def test_out_of_range_limit_never_reaches_the_driver(nvml: Any, client: Client) -> None:
    """2**32 + a valid limit is refused (-32602) and the GPU's limit is unchanged."""
    handle = _handles(nvml)[0]
    before = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    low, _ = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    response = client.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=2**32 + low)
    assert response["error"]["code"] == -32602
    assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == before


def test_power_stream_from_the_real_gpu(client: Client) -> None:
    """gpu.subscribe_power streams positive readings of GPU 0; unsubscribe ends it."""
    sub = client.result("gpu.subscribe_power", gpu_ids=[0], interval_ms=50)["subscription"]
    notes = [json.loads(client.file.readline()) for _ in range(5)]
    assert all(n["method"] == "gpu.power" for n in notes)
    assert all(n["params"]["power_mw"]["0"] > 0 for n in notes)
    request = {"jsonrpc": "2.0", "method": "unsubscribe", "params": {"subscription": sub}, "id": 0}
    client.sock.sendall(json.dumps(request).encode() + b"\n")
    while "id" not in (reply := json.loads(client.file.readline())):
        pass
    assert reply["result"] is True


def test_rapl_energy_grows_where_the_node_has_rapl(client: Client) -> None:
    """On a node with RAPL, cpu.get_cumulative_energy grows between two reads."""
    if "cpu-read" not in client.result("discover")["enabled_api_groups"]:
        pytest.skip("no usable RAPL tree on this node")
    first = client.result("cpu.get_cumulative_energy")
    time.sleep(0.2)
    second = client.result("cpu.get_cumulative_energy")
    for cpu, values in first.items():
        assert second[cpu]["cpu_energy_uj"] > values["cpu_energy_uj"]
