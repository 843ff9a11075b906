"""A test-only stand-in for ``pynvml`` that serves NVML calls from zeusd's simulated NVML.

Put this directory first on ``PYTHONPATH`` and an unmodified Zeus, on a machine without a
GPU, reads its GPUs locally from simulated H100s (``ZEUSD_SIM_GPUS``, default 4) while its
writes go to zeusd through ``ZEUSD_SOCK_PATH``. Everything else (error classes, constants)
is the real nvidia-ml-py module's, so ``except pynvml.NVMLError`` works as on a GPU node.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import SimpleNamespace
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "pynvml", [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
)
if _spec is None or _spec.loader is None:
    raise ImportError("nvidia-ml-py is not installed")
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

from zeusd.sim import SimNvml, default_sim_gpus  # noqa: E402  (needs the names above)

_sim = SimNvml(default_sim_gpus(int(os.environ.get("ZEUSD_SIM_GPUS", "4"))))
for _name in dir(_sim):
    if _name.startswith("nvml"):
        globals()[_name] = getattr(_sim, _name)


def nvmlDeviceGetArchitecture(handle: Any) -> int:
    return _real.NVML_DEVICE_ARCH_HOPPER


def nvmlDeviceGetC2cModeInfoV(handle: Any) -> Any:
    raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)


def nvmlDeviceGetTemperatureV(handle: Any, sensor: int) -> int:
    return 40


def nvmlDeviceGetFieldValues(handle: Any, fields: Any) -> list[Any]:
    power = _sim.nvmlDeviceGetPowerUsage(handle)
    value = SimpleNamespace(uiVal=power)
    return [SimpleNamespace(nvmlReturn=_real.NVML_SUCCESS, value=value) for _ in fields]
