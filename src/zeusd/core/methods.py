"""The method table: every JSON-RPC method with its params, result shape and handler.

This one table drives param checking in the dispatcher, the OpenRPC document served by
``rpc.discover`` and the docs, so they cannot drift apart. Handlers are called synchronously
with the request's params; a handler returns a jsonrpcserver ``Result`` or an awaitable of
one (GPU work already queued on the lanes). Every handler is called as
``handler(context, session, **params)``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from jsonrpcserver.result import Result, Success

from zeusd.core import gpu_commands as cmd
from zeusd.core import streaming
from zeusd.core.context import Context
from zeusd.core.omitted import OMITTED
from zeusd.core.session import Session
from zeusd.stream.hub import DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS, MIN_INTERVAL_MS

Handler = Callable[..., "Result | Awaitable[Result]"]
Schema = dict[str, Any]

GPU_CONTROL = "gpu-control"
GPU_READ = "gpu-read"
CPU_READ = "cpu-read"
API_GROUPS = (GPU_CONTROL, GPU_READ, CPU_READ)


@attrs.frozen
class Param:
    name: str
    schema: Schema
    description: str
    required: bool = False
    #: What the dispatcher passes when an optional param is left out.
    default: Any = OMITTED


@attrs.frozen
class MethodSpec:
    name: str
    summary: str
    #: The API group that must be enabled for this method; None: always available.
    group: str | None
    params: tuple[Param, ...]
    result: Schema
    handler: Handler
    param_names: frozenset[str] = attrs.field(init=False)
    required: tuple[str, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))
        object.__setattr__(self, "required", tuple(p.name for p in self.params if p.required))


_INT: Schema = {"type": "integer"}
_UINT32: Schema = {"type": "integer", "minimum": 1, "maximum": cmd.UINT32_MAX}
_GPU_IDS: Schema = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
    "uniqueItems": True,
}


def _gpu_ids(*, required: bool) -> Param:
    if required:
        return Param("gpu_ids", _GPU_IDS, "GPU indices to act on (distinct).", required=True)
    return Param("gpu_ids", _GPU_IDS, "GPU indices to read (distinct); omitted: every GPU.")


def _object(**properties: Schema) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _by_gpu(value: Schema) -> Schema:
    return {"type": "object", "description": "Keyed by GPU id.", "additionalProperties": value}


def _by_cpu(value: Schema) -> Schema:
    return {"type": "object", "description": "Keyed by CPU id.", "additionalProperties": value}


_APPLIED = _object(applied={"type": "array", "items": _INT})


def _gpu_handler(command: type[Any]) -> Handler:
    def handle(ctx: Context, session: Session, gpu_ids: object, **params: Any) -> Awaitable[Result]:
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
    )


def _read(
    name: str, summary: str, command: type[Any], result: Schema, *params: Param
) -> MethodSpec:
    return MethodSpec(
        name, summary, GPU_READ, (_gpu_ids(required=False), *params), result, _gpu_handler(command)
    )


def _discover(ctx: Context, session: Session) -> Result:
    return Success(
        {
            "version": ctx.version,
            "backend": ctx.backend,
            "gpus": [info.describe() for info in ctx.gpus.infos],
            "cpus": [cpu.describe() for cpu in ctx.cpus.cpus],
            "enabled_api_groups": list(ctx.enabled_groups),
            "auth_required": ctx.auth_required,
        }
    )


def _time(ctx: Context, session: Session) -> Result:
    return Success({"timestamp_ms": int(time.time() * 1000)})


def _clock_params() -> tuple[Param, Param]:
    return (
        Param("min_clock_mhz", _UINT32, "Lowest clock to allow, MHz.", required=True),
        Param("max_clock_mhz", _UINT32, "Highest clock to allow, MHz (>= min).", required=True),
    )


_CPU_IDS: Schema = {**_GPU_IDS}


def _cpu_ids() -> Param:
    return Param("cpu_ids", _CPU_IDS, "CPU package ids to read (distinct); omitted: every CPU.")


def _interval() -> Param:
    return Param(
        "interval_ms",
        {"type": "integer", "minimum": MIN_INTERVAL_MS, "maximum": MAX_INTERVAL_MS},
        f"Milliseconds between notifications ({DEFAULT_INTERVAL_MS}).",
        default=DEFAULT_INTERVAL_MS,
    )


_LOCK: Schema = {
    "oneOf": [_object(min_clock_mhz=_INT, max_clock_mhz=_INT), {"type": "null"}],
}
_SUBSCRIPTION = _object(subscription={"type": "string"})
_NULLABLE_INT: Schema = {"type": ["integer", "null"]}


def _stream_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            "gpu.subscribe_power",
            "Stream GPU power: 'gpu.power' notifications {subscription, timestamp_ms, power_mw}.",
            GPU_READ,
            (_gpu_ids(required=False), _interval()),
            _SUBSCRIPTION,
            streaming.subscribe_gpu_power,
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
            _by_cpu(_object(cpu_energy_uj=_NULLABLE_INT, dram_energy_uj=_NULLABLE_INT)),
            streaming.cpu_cumulative_energy,
        ),
        MethodSpec(
            "cpu.get_power",
            "CPU package and DRAM power over a 50 ms window (two RAPL energy readings).",
            CPU_READ,
            (_cpu_ids(),),
            _object(
                timestamp_ms=_INT,
                power_mw=_by_cpu(_object(cpu_mw=_INT, dram_mw=_NULLABLE_INT)),
            ),
            streaming.cpu_power,
        ),
        MethodSpec(
            "cpu.subscribe_power",
            "Stream CPU power: 'cpu.power' notifications, power_mw as in cpu.get_power.",
            CPU_READ,
            (_cpu_ids(), _interval()),
            _SUBSCRIPTION,
            streaming.subscribe_cpu_power,
        ),
        MethodSpec(
            "unsubscribe",
            "End a subscription of this connection; no notification of it follows the reply.",
            None,
            (Param("subscription", {"type": "string"}, "The id subscribe gave.", required=True),),
            {"const": True},
            streaming.unsubscribe,
        ),
    ]


def _rpc_discover(ctx: Context, session: Session) -> Result:
    from zeusd.rpc.openrpc import openrpc_document  # the document needs this module's table

    return Success(openrpc_document(ctx.version))


def build_methods() -> Mapping[str, MethodSpec]:
    """Every method zeusd serves, by name."""
    from zeusd.core.session_methods import session_methods  # they need MethodSpec from here

    power_limit = Param(
        "power_limit_mw",
        {"type": "integer", "minimum": 1, "maximum": cmd.UINT32_MAX},
        "New power limit in milliwatts, within every target GPU's constraints.",
        required=True,
    )
    specs = [
        MethodSpec(
            "discover",
            "Describe the daemon, its GPUs and CPUs, and the enabled API groups.",
            None,
            (),
            _object(
                version={"type": "string"},
                backend={"enum": ["nvml", "sim"]},
                gpus={"type": "array", "items": {"type": "object"}},
                cpus={"type": "array", "items": {"type": "object"}},
                enabled_api_groups={"type": "array", "items": {"type": "string"}},
                auth_required={"type": "boolean"},
            ),
            _discover,
        ),
        MethodSpec(
            "time",
            "The daemon's wall clock, Unix milliseconds.",
            None,
            (),
            _object(timestamp_ms=_INT),
            _time,
        ),
        MethodSpec(
            "rpc.discover",
            "This OpenRPC document.",
            None,
            (),
            {"type": "object", "description": "An OpenRPC 1.2 document."},
            _rpc_discover,
        ),
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
            _by_gpu(_object(power_limit_mw=_INT)),
        ),
        _read(
            "gpu.get_power_limit_constraints",
            "Allowed and default power limits.",
            cmd.GetPowerLimitConstraints,
            _by_gpu(
                _object(
                    min_power_limit_mw=_INT, max_power_limit_mw=_INT, default_power_limit_mw=_INT
                )
            ),
        ),
        _read(
            "gpu.get_persistence_mode",
            "Whether persistence mode is on.",
            cmd.GetPersistenceMode,
            _by_gpu(_object(enabled={"type": "boolean"})),
        ),
        _read(
            "gpu.get_locked_clocks",
            "Clock locks set through this daemon and not reset since (null: none); NVML "
            "cannot read locks back, so one set by another program is not seen.",
            cmd.GetLockedClocks,
            _by_gpu(_object(gpu_locked_clocks=_LOCK, mem_locked_clocks=_LOCK)),
        ),
        _read(
            "gpu.get_power",
            "Instantaneous power draw.",
            cmd.GetPower,
            _object(timestamp_ms=_INT, power_mw=_by_gpu(_INT)),
        ),
        _read(
            "gpu.get_cumulative_energy",
            "Energy used since the driver loaded, millijoules.",
            cmd.GetCumulativeEnergy,
            _by_gpu(_object(energy_mj=_INT)),
        ),
        _read(
            "gpu.get_supported_memory_clocks",
            "Memory clocks the GPU supports.",
            cmd.GetSupportedMemoryClocks,
            _by_gpu(_object(memory_clocks_mhz={"type": "array", "items": _INT})),
        ),
        _read(
            "gpu.get_supported_graphics_clocks",
            "Graphics clocks supported at a memory clock.",
            cmd.GetSupportedGraphicsClocks,
            _by_gpu(_object(graphics_clocks_mhz={"type": "array", "items": _INT})),
            Param(
                "memory_clock_mhz",
                _UINT32,
                "A supported memory clock; omitted: each GPU's highest.",
            ),
        ),
        *session_methods(),
        *_stream_methods(),
    ]
    return {spec.name: spec for spec in specs}
