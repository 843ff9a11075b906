"""--gpu-backend auto: the one vendor library that finds GPUs, or a clear start-up error."""

from __future__ import annotations

import sys

import pytest

from zeusd.gpu.amdsmi_backend import AmdsmiBackend
from zeusd.gpu.backend import NvmlBackend
from zeusd.gpu.choose import BackendError, load_amdsmi, open_auto
from zeusd.gpu.device import GpuBackend
from zeusd.sim import SimAmdsmi, SimNvml, default_sim_gpus


def _nvidia(count: int) -> GpuBackend:
    sim = SimNvml(default_sim_gpus(count)) if count else SimNvml([])
    return NvmlBackend.open(sim, name="nvml")


def _amd(count: int) -> GpuBackend:
    sim = SimAmdsmi(default_sim_gpus(count, "amd")) if count else SimAmdsmi([])
    return AmdsmiBackend.open(sim, name="amdsmi")


def _missing(why: str) -> GpuBackend:
    raise BackendError(why)


def test_the_vendor_with_gpus_is_chosen() -> None:
    """NVML unusable and amdsmi finding GPUs: amdsmi serves."""
    backend = open_auto({"nvml": lambda: _missing("no driver"), "amdsmi": lambda: _amd(2)})
    assert backend.name == "amdsmi"
    assert len(backend.devices) == 2


def test_a_library_without_gpus_is_skipped_and_closed() -> None:
    """A vendor library that loads but sees no GPUs is closed and the other one is used."""
    empty = SimAmdsmi([])
    backend = open_auto({"nvml": lambda: _nvidia(1), "amdsmi": lambda: AmdsmiBackend.open(empty)})
    assert backend.name == "nvml"
    with pytest.raises(empty.AmdSmiLibraryException):
        empty.amdsmi_shut_down()  # already shut down by open_auto


def test_both_vendors_with_gpus_is_an_error_naming_the_flag() -> None:
    """GPUs of both vendors: refuse, and say how to choose."""
    with pytest.raises(BackendError) as info:
        open_auto({"nvml": lambda: _nvidia(1), "amdsmi": lambda: _amd(2)})
    message = str(info.value)
    assert "--gpu-backend nvml" in message
    assert "--gpu-backend amdsmi" in message
    assert "nvml finds 1" in message
    assert "amdsmi finds 2" in message


def test_no_gpus_anywhere_is_an_error_with_each_reason() -> None:
    """Neither library finds GPUs: the error gives each library's reason and the sim hint."""
    with pytest.raises(BackendError) as info:
        open_auto({"nvml": lambda: _missing("driver not loaded"), "amdsmi": lambda: _amd(0)})
    message = str(info.value)
    assert "nvml: driver not loaded" in message
    assert "amdsmi: no GPUs" in message
    assert "--gpu-backend sim" in message


def test_load_amdsmi_explains_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the amdsmi package the reason names it (CI has none installed)."""
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    with pytest.raises(BackendError, match="amdsmi Python package is not installed"):
        load_amdsmi()
