"""Units of the Zeus backend: error mapping and CUDA_VISIBLE_DEVICES rules."""

from __future__ import annotations

import pytest

zeus_gpu = pytest.importorskip("zeus.device.gpu", reason="the zeus extra is not installed")
zeus_backend = pytest.importorskip("zeusd.zeus_backend")


def test_error_mapping_units() -> None:
    """One NVML error maps to its Zeus class; mixed errors are unknown; connection is ZeusdError."""
    from zeus.device.exception import ZeusdError

    from zeusd.client import ZeusdConnectionError
    from zeusd.client.errors import rpc_error

    def device(*names: str) -> Exception:
        errors = {str(i): {"nvml_error": n, "message": ""} for i, n in enumerate(names)}
        data = {"succeeded": [], "errors": errors}
        return rpc_error("m", {"code": -32001, "message": "Device error", "data": data})

    timeout = zeus_backend.zeus_error(device("NVML_ERROR_TIMEOUT", "NVML_ERROR_TIMEOUT"))
    assert type(timeout) is zeus_gpu.ZeusGPUTimeoutError
    mixed = zeus_backend.zeus_error(device("NVML_ERROR_TIMEOUT", "NVML_ERROR_GPU_IS_LOST"))
    assert type(mixed) is zeus_gpu.ZeusGPUUnknownError
    denied = rpc_error("m", {"code": -32002, "message": "Permission denied"})
    assert type(zeus_backend.zeus_error(denied)) is zeus_gpu.ZeusGPUNoPermissionError
    lost = zeus_backend.zeus_error(ZeusdConnectionError("gone"))
    assert type(lost) is ZeusdError


def test_visible_indices_rules() -> None:
    """Unset: all GPUs; a list keeps its order; empty, MIG and non-numbers are refused."""
    assert zeus_backend.visible_indices([0, 1, 2], {}) == [0, 1, 2]
    assert zeus_backend.visible_indices([0, 1, 2], {"CUDA_VISIBLE_DEVICES": "2,0"}) == [2, 0]
    for bad in ("", "MIG-abc", "0,x"):
        with pytest.raises(zeus_gpu.ZeusGPUInitError):
            zeus_backend.visible_indices([0, 1], {"CUDA_VISIBLE_DEVICES": bad})
