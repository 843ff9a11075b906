"""Which vendor library drives this node's GPUs (``--gpu-backend auto|nvml|amdsmi``).

``auto`` opens each vendor library and keeps the one that finds GPUs. Both finding GPUs is
an error (which GPUs to serve is then the operator's choice), and so is neither.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from collections.abc import Callable, Mapping
from typing import cast

import pynvml

from zeusd.gpu.amdsmi_api import AmdsmiApi
from zeusd.gpu.amdsmi_backend import AmdsmiBackend
from zeusd.gpu.backend import NvmlBackend, NvmlCallError
from zeusd.gpu.device import GpuBackend

log = logging.getLogger(__name__)

Opener = Callable[[], GpuBackend]


class BackendError(Exception):
    """No usable GPU backend; the message says why and what to do."""


def load_amdsmi() -> AmdsmiApi:
    """Import the real ``amdsmi`` package. Raises BackendError if it is missing or unusable."""
    try:
        # amdsmi prints to stdout when libamd_smi.so is missing; stdout is not ours to use.
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module("amdsmi")
    except ImportError:
        raise BackendError(
            "the amdsmi Python package is not installed (it ships with ROCm, or "
            "pip install 'zeusd[amd]' matching your ROCm version)"
        ) from None
    except Exception as exc:  # amdsmi raises KeyError/OSError when libamd_smi.so is missing
        raise BackendError(f"the amdsmi package cannot load libamd_smi.so ({exc!r})") from None
    return cast(AmdsmiApi, module)


def open_nvml() -> GpuBackend:
    try:
        return NvmlBackend.open(pynvml)
    except NvmlCallError as exc:
        raise BackendError(f"cannot initialise NVML: {exc}") from exc


def open_amdsmi() -> GpuBackend:
    try:
        return AmdsmiBackend.open(load_amdsmi())
    except NvmlCallError as exc:
        raise BackendError(f"cannot initialise amdsmi: {exc}") from exc


OPENERS: Mapping[str, Opener] = {"nvml": open_nvml, "amdsmi": open_amdsmi}


def open_auto(openers: Mapping[str, Opener] = OPENERS) -> GpuBackend:
    """Open the one vendor library that finds GPUs. Raises BackendError otherwise."""
    found: list[GpuBackend] = []
    reasons: list[str] = []
    for name, opener in openers.items():
        try:
            backend = opener()
        except BackendError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        if backend.devices:
            found.append(backend)
        else:
            reasons.append(f"{name}: no GPUs")
            backend.close()
    if len(found) > 1:
        counts = ", ".join(f"{b.name} finds {len(b.devices)}" for b in found)
        for backend in found:
            backend.close()
        raise BackendError(
            f"more than one vendor library finds GPUs ({counts}): choose which to serve "
            f"with --gpu-backend {' or --gpu-backend '.join(b.name for b in found)}"
        )
    if not found:
        raise BackendError(
            f"no GPUs found ({'; '.join(reasons)}). Choose a backend with --gpu-backend, "
            "or use --gpu-backend sim to try zeusd without a GPU"
        )
    log.info("--gpu-backend auto: using %s", found[0].name)
    return found[0]
