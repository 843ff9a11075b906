"""Simulated GPUs: stand-ins for the ``pynvml`` and ``amdsmi`` modules, and the TOML file
that describes them.

``SimNvml`` is passed to the NVML backend in place of the ``pynvml`` module (tests and
``--gpu-backend sim``), ``SimAmdsmi`` to the amdsmi backend in place of ``amdsmi``
(``--sim-vendor amd``); ``load_sim_config`` reads the ``[[gpu]]`` tables that describe them.
"""

from zeusd.sim.amdsmi import SimAmdGpu, SimAmdsmi
from zeusd.sim.config import (
    AMD_FAULT_FUNCTIONS,
    FAULT_FUNCTIONS,
    VENDORS,
    SimConfigError,
    SimGpuSpec,
    default_sim_gpus,
    load_sim_config,
    parse_sim_config,
)
from zeusd.sim.nvml import SimDevice, SimNvml

__all__ = [
    "AMD_FAULT_FUNCTIONS",
    "FAULT_FUNCTIONS",
    "VENDORS",
    "SimAmdGpu",
    "SimAmdsmi",
    "SimConfigError",
    "SimDevice",
    "SimGpuSpec",
    "SimNvml",
    "default_sim_gpus",
    "load_sim_config",
    "parse_sim_config",
]
