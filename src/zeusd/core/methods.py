"""The method table: every method zeusd serves, with its params, result shape and handler.

This one table drives the param check (``zeusd.core.calls``), the access gate, the OpenRPC
document that ``rpc.discover`` returns, the HTTP routes and the docs, so none of them can
drift from another. Every handler is called as ``handler(context, session, **params)`` and
returns the result value, or an awaitable of it whose device work is already queued.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any

from zeusd.core import gpu_commands as cmd
from zeusd.core import streaming
from zeusd.core.context import Context
from zeusd.core.session import Session
from zeusd.core.session_methods import session_methods
from zeusd.core.spec import (
    CPU_READ,
    GPU_CONTROL,
    GPU_READ,
    ID_LIST,
    INT,
    NULLABLE_INT,
    Handler,
    MethodSpec,
    Param,
    Schema,
    keyed_by,
    object_schema,
)
from zeusd.stream.hub import DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS, MIN_INTERVAL_MS

_UINT32: Schema = {"type": "integer", "minimum": 1, "maximum": cmd.UINT32_MAX}
_APPLIED = object_schema(applied={"type": "array", "items": INT})
_SUBSCRIPTION = object_schema(subscription={"type": "string"})
_LOCK: Schema = {
    "oneOf": [object_schema(min_clock_mhz=INT, max_clock_mhz=INT), {"type": "null"}],
}


def _gpu_ids(*, required: bool) -> Param:
    if required:
        return Param("gpu_ids", ID_LIST, "GPU indices to act on (distinct).", required=True)
    return Param("gpu_ids", ID_LIST, "GPU indices to read (distinct); omitted: every GPU.")


def _cpu_ids() -> Param:
    return Param("cpu_ids", ID_LIST, "CPU package ids to read (distinct); omitted: every CPU.")


def _gpu_handler(command: type[Any]) -> Handler:
    def handle(ctx: Context, session: Session, gpu_ids: object, **params: Any) -> Awaitable[Any]:
        return ctx.submit(command(ctx.gpus.resolve(gpu_ids), **params), session)

    return handle


def _write(name: str, summary: str, command: type[Any], *params: Param) -> MethodSpec:
    return MethodSpec(
        name,
        summary,
        GPU_CONTROL,
        (_gpu_ids(required=True), *params),
        _APPLIED,
        _gpu_handler(command),
        touches_devices=True,
    )


def _read(
    name: str, summary: str, command: type[Any], result: Schema, *params: Param
) -> MethodSpec:
    return MethodSpec(
        name,
        summary,
        GPU_READ,
        (_gpu_ids(required=False), *params),
        result,
        _gpu_handler(command),
        touches_devices=True,
    )


def _discover(ctx: Context, session: Session) -> dict[str, Any]:
    return {
        "version": ctx.version,
        "backend": ctx.backend,
        "gpus": [info.describe() for info in ctx.gpus.infos],
        "cpus": [cpu.describe() for cpu in ctx.cpus.cpus],
        "enabled_api_groups": list(ctx.policy.enabled_groups),
        # Whether this caller's transport needs a token (a Unix socket never does).
        "auth_required": ctx.policy.requires_token(session.transport),
    }


def _time(ctx: Context, session: Session) -> dict[str, Any]:
    return {"timestamp_ms": int(time.time() * 1000)}


def _clock_params() -> tuple[Param, Param]:
    return (
        Param("min_clock_mhz", _UINT32, "Lowest clock to allow, MHz.", required=True),
        Param("max_clock_mhz", _UINT32, "Highest clock to allow, MHz (>= min).", required=True),
    )


def _interval() -> Param:
    return Param(
        "interval_ms",
        {"type": "integer", "minimum": MIN_INTERVAL_MS, "maximum": MAX_INTERVAL_MS},
        f"Milliseconds between notifications ({DEFAULT_INTERVAL_MS}).",
        default=DEFAULT_INTERVAL_MS,
    )


def _daemon_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            "discover",
            "Describe the daemon, its GPUs and CPUs, and the enabled API groups.",
            None,
            (),
            object_schema(
                version={"type": "string"},
                backend={"enum": ["nvml", "amdsmi", "sim"]},
                gpus={"type": "array", "items": {"type": "object"}},
                cpus={"type": "array", "items": {"type": "object"}},
                enabled_api_groups={"type": "array", "items": {"type": "string"}},
                auth_required={"type": "boolean"},
            ),
            _discover,
            touches_devices=False,
            public=True,
        ),
        MethodSpec(
            "time",
            "The daemon's wall clock, Unix milliseconds.",
            None,
            (),
            object_schema(timestamp_ms=INT),
            _time,
            touches_devices=False,
            public=True,
        ),
    ]


def _gpu_methods() -> list[MethodSpec]:
    power_limit = Param(
        "power_limit_mw",
        {"type": "integer", "minimum": 1, "maximum": cmd.UINT32_MAX},
        "New power limit in milliwatts, within every target GPU's constraints.",
        required=True,
    )
    return [
        _write("gpu.set_power_limit", "Set the power limit.", cmd.SetPowerLimit, power_limit),
        _write(
            "gpu.reset_power_limit",
            "Set the power limit back to the GPU's default.",
            cmd.ResetPowerLimit,
        ),
        _write(
            "gpu.set_persistence_mode",
            "Enable or disable persistence mode.",
            cmd.SetPersistenceMode,
            Param("enabled", {"type": "boolean"}, "true to enable.", required=True),
        ),
        _write(
            "gpu.set_gpu_locked_clocks",
            "Lock graphics clocks to a range.",
            cmd.SetGpuLockedClocks,
            *_clock_params(),
        ),
        _write(
            "gpu.reset_gpu_locked_clocks",
            "Remove the graphics clock lock.",
            cmd.ResetGpuLockedClocks,
        ),
        _write(
            "gpu.set_mem_locked_clocks",
            "Lock memory clocks to a range.",
            cmd.SetMemLockedClocks,
            *_clock_params(),
        ),
        _write(
            "gpu.reset_mem_locked_clocks",
            "Remove the memory clock lock.",
            cmd.ResetMemLockedClocks,
        ),
        _write(
            "gpu.reset_locked_clocks",
            "Remove both clock locks (both are attempted even if one fails).",
            cmd.ResetLockedClocks,
        ),
        _read(
            "gpu.get_power_limit",
            "Current power limit.",
            cmd.GetPowerLimit,
            keyed_by("GPU", object_schema(power_limit_mw=INT)),
        ),
        _read(
            "gpu.get_power_limit_constraints",
            "Allowed and default power limits.",
            cmd.GetPowerLimitConstraints,
            keyed_by(
                "GPU",
                object_schema(
                    min_power_limit_mw=INT, max_power_limit_mw=INT, default_power_limit_mw=INT
                ),
            ),
        ),
        _read(
            "gpu.get_persistence_mode",
            "Whether persistence mode is on.",
            cmd.GetPersistenceMode,
            keyed_by("GPU", object_schema(enabled={"type": "boolean"})),
        ),
        _read(
            "gpu.get_locked_clocks",
            "Clock locks set through this daemon and not reset since (null: none); NVML "
            "cannot read locks back, so one set by another program is not seen.",
            cmd.GetLockedClocks,
            keyed_by("GPU", object_schema(gpu_locked_clocks=_LOCK, mem_locked_clocks=_LOCK)),
        ),
        _read(
            "gpu.get_power",
            "Instantaneous power draw.",
            cmd.GetPower,
            object_schema(timestamp_ms=INT, power_mw=keyed_by("GPU", INT)),
        ),
        _read(
            "gpu.get_cumulative_energy",
            "Energy used since the driver loaded, millijoules.",
            cmd.GetCumulativeEnergy,
            keyed_by("GPU", object_schema(energy_mj=INT)),
        ),
        _read(
            "gpu.get_supported_memory_clocks",
            "Memory clocks the GPU supports.",
            cmd.GetSupportedMemoryClocks,
            keyed_by("GPU", object_schema(memory_clocks_mhz={"type": "array", "items": INT})),
        ),
        _read(
            "gpu.get_supported_graphics_clocks",
            "Graphics clocks supported at a memory clock.",
            cmd.GetSupportedGraphicsClocks,
            keyed_by("GPU", object_schema(graphics_clocks_mhz={"type": "array", "items": INT})),
            Param(
                "memory_clock_mhz",
                _UINT32,
                "A supported memory clock; omitted: each GPU's highest.",
            ),
        ),
    ]


def _stream_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            "gpu.subscribe_power",
            "Stream GPU power: 'gpu.power' notifications {subscription, timestamp_ms, power_mw}.",
            GPU_READ,
            (_gpu_ids(required=False), _interval()),
            _SUBSCRIPTION,
            streaming.subscribe_gpu_power,
            touches_devices=False,
        ),
        MethodSpec(
            "cpu.get_cumulative_energy",
            "RAPL energy since the daemon's first reading of the counter, microjoules.",
            CPU_READ,
            (
                _cpu_ids(),
                Param("cpu", {"type": "boolean"}, "Read the package zone (true).", default=True),
                Param("dram", {"type": "boolean"}, "Read the DRAM zone (true).", default=True),
            ),
            keyed_by("CPU", object_schema(cpu_energy_uj=NULLABLE_INT, dram_energy_uj=NULLABLE_INT)),
            streaming.cpu_cumulative_energy,
            touches_devices=True,
        ),
        MethodSpec(
            "cpu.get_power",
            "CPU package and DRAM power over a 50 ms window (two RAPL energy readings).",
            CPU_READ,
            (_cpu_ids(),),
            object_schema(
                timestamp_ms=INT,
                power_mw=keyed_by("CPU", object_schema(cpu_mw=INT, dram_mw=NULLABLE_INT)),
            ),
            streaming.cpu_power,
            touches_devices=True,
        ),
        MethodSpec(
            "cpu.subscribe_power",
            "Stream CPU power: 'cpu.power' notifications, power_mw as in cpu.get_power.",
            CPU_READ,
            (_cpu_ids(), _interval()),
            _SUBSCRIPTION,
            streaming.subscribe_cpu_power,
            touches_devices=False,
        ),
        MethodSpec(
            "unsubscribe",
            "End a subscription of this connection; no notification of it follows the reply.",
            None,
            (Param("subscription", {"type": "string"}, "The id subscribe gave.", required=True),),
            {"const": True},
            streaming.unsubscribe,
            touches_devices=False,
        ),
    ]


def build_methods() -> Mapping[str, MethodSpec]:
    """Every method of the core, by name (a front end may add its own, as rpc.discover)."""
    specs = [*_daemon_methods(), *_gpu_methods(), *session_methods(), *_stream_methods()]
    return {spec.name: spec for spec in specs}
