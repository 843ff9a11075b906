"""Simulated GPUs: a stand-in for the ``pynvml`` module and the TOML file that describes it.

``SimNvml`` is passed to the NVML backend in place of the ``pynvml`` module (tests and
``--gpu-backend sim``); ``load_sim_config`` reads the ``[[gpu]]`` tables that describe it.
"""

from zeusd.sim.config import (
    FAULT_FUNCTIONS,
    SimConfigError,
    SimGpuSpec,
    default_sim_gpus,
    load_sim_config,
    parse_sim_config,
)
from zeusd.sim.nvml import SimDevice, SimNvml

__all__ = [
    "FAULT_FUNCTIONS",
    "SimConfigError",
    "SimDevice",
    "SimGpuSpec",
    "SimNvml",
    "default_sim_gpus",
    "load_sim_config",
    "parse_sim_config",
]
