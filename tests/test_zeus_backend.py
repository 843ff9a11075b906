"""Zeus (from PyPI) measuring and controlling simulated GPUs through zeusd, with no NVML."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from process_helpers import DaemonProcess, running_daemon, short_tempdir, write_sim_config
from zeusd.client import ZeusdClient

zeus_gpu = pytest.importorskip("zeus.device.gpu", reason="the zeus extra is not installed")
zeus_backend = pytest.importorskip("zeusd.zeus_backend")

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    path = os.path.join(short_tempdir(), "zeusd.sock")
    with running_daemon(socket_path=path, sim_gpus=4) as d:
        yield d


@pytest.fixture
def installed(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("ZEUSD_SOCK_PATH", daemon.socket_path or "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = zeus_backend.install()
    try:
        yield gpus
    finally:
        for gpu in gpus.gpus:
            gpu.reset_power_management_limit()
        zeus_backend.uninstall()


def test_zeus_monitor_measures_energy(installed: object) -> None:
    """A ZeusMonitor window over a short run reports non-zero energy for every GPU."""
    from zeus.device import get_gpus
    from zeus.monitor import ZeusMonitor

    assert get_gpus() is installed
    monitor = ZeusMonitor(cpu_indices=[])
    assert monitor.gpu_indices == [0, 1, 2, 3]
    monitor.begin_window("step", sync_execution=False)
    time.sleep(0.3)
    measurement = monitor.end_window("step", sync_execution=False)
    assert set(measurement.gpu_energy) == {0, 1, 2, 3}
    assert all(joules > 0 for joules in measurement.gpu_energy.values()), measurement
    assert measurement.time >= 0.3


def test_power_limit_through_zeus_api(installed: object, daemon: DaemonProcess) -> None:
    """A limit set with Zeus's GPUs API is what the daemon's gpu.get_power_limit returns."""
    from zeus.device import get_gpus

    gpus = get_gpus()
    gpus.set_power_management_limit(2, 275_000)
    with ZeusdClient(daemon.socket_path) as raw:
        assert raw.get_power_limit([2]) == {2: 275_000}
    assert gpus.get_power_management_limit(2) == 275_000
    assert gpus.get_power_management_limit_constraints(2) == (200_000, 700_000)
    gpus.set_power_management_limit(2, 300_000, block=False)  # a notification
    assert gpus.get_power_management_limit(2) == 300_000
    assert gpus.gpus[2].supports_nonblocking_setters


def test_reads_and_clocks_through_zeus(installed: object) -> None:
    """Reads map to the daemon's reads with Zeus's units."""
    from zeus.device import get_gpus

    gpus = get_gpus()
    assert gpus.get_name(0) == "NVIDIA H100 80GB HBM3"
    assert gpus.get_instant_power_usage(0) > 0
    assert gpus.supports_get_total_energy_consumption(0)
    assert gpus.get_supported_memory_clocks(0) == [2619]
    assert 1980 in gpus.get_supported_graphics_clocks(0, 2619)
    gpus.set_persistence_mode(1, True)
    assert gpus.get_persistence_mode(1) is True
    gpus.set_persistence_mode(1, False)


def test_errors_use_zeus_exception_types(installed: object) -> None:
    """An out-of-range limit raises ZeusGPUInvalidArgError; unserved reads NotSupported."""
    from zeus.device import get_gpus

    gpus = get_gpus()
    with pytest.raises(zeus_gpu.ZeusGPUInvalidArgError, match="power_limit_mw"):
        gpus.set_power_management_limit(0, 5)
    with pytest.raises(zeus_gpu.ZeusGPUNotSupportedError):
        gpus.get_gpu_temperature(0)


def test_device_fault_maps_to_zeus_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NVML NO_PERMISSION in the daemon becomes ZeusGPUNoPermissionError."""
    tmp = short_tempdir()
    config = write_sim_config(
        tmp, '[[gpu]]\n[gpu.faults]\nset_persistence_mode = "NVML_ERROR_NO_PERMISSION"\n'
    )
    path = os.path.join(tmp, "z.sock")
    with running_daemon("--sim-config", config, socket_path=path):
        monkeypatch.setenv("ZEUSD_SOCK_PATH", path)
        gpus = zeus_backend.install()
        try:
            with pytest.raises(zeus_gpu.ZeusGPUNoPermissionError, match="NO_PERMISSION"):
                gpus.set_persistence_mode(0, True)
        finally:
            zeus_backend.uninstall()


def test_cuda_visible_devices_is_honored(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CUDA_VISIBLE_DEVICES=3,1, Zeus index 0 is daemon GPU 3 and index 1 is GPU 1."""
    monkeypatch.setenv("ZEUSD_SOCK_PATH", daemon.socket_path or "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    gpus = zeus_backend.install()
    try:
        assert len(gpus) == 2
        gpus.set_power_management_limit(0, 222_000)
        with ZeusdClient(daemon.socket_path) as raw:
            assert raw.get_power_limit([3, 1]) == {3: 222_000, 1: 700_000}
        gpus.reset_power_management_limit(0)
    finally:
        zeus_backend.uninstall()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with pytest.raises(zeus_gpu.ZeusGPUInitError, match=r"\[7\]"):
        zeus_backend.install()


def test_unreachable_daemon_is_a_zeus_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No daemon at ZEUSD_SOCK_PATH: Zeus's ZeusdError, and nothing is installed."""
    from zeus.device.exception import ZeusdError

    monkeypatch.setenv("ZEUSD_SOCK_PATH", os.path.join(short_tempdir(), "none.sock"))
    with pytest.raises(ZeusdError, match="cannot connect"):
        zeus_backend.install()
    assert zeus_gpu._gpus is None
