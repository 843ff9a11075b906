"""How a method is described: its name, API group, params, result and errors.

One :class:`MethodSpec` per method, in the table of ``zeusd.core.methods``. Everything that
has to agree about a method reads it from there: the param check in ``zeusd.core.calls``,
the access gate, the OpenRPC document, the HTTP routes and the docs tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from zeusd.core.errors import (
    AuthRequiredError,
    DeviceError,
    GroupDisabledError,
    InvalidParamsError,
    PermissionDeniedError,
    ZeusdError,
)
from zeusd.core.omitted import OMITTED

#: ``handler(context, session, **params)``: a result value, or an awaitable of one (its
#: device work already queued); failures are raised as ZeusdError.
Handler = Callable[..., Any | Awaitable[Any]]
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
    #: What the handler gets when an optional param is left out.
    default: Any = OMITTED


def _errors(spec: MethodSpec) -> tuple[type[ZeusdError], ...]:
    found: list[type[ZeusdError]] = [InvalidParamsError]
    if spec.group is not None:
        found += [GroupDisabledError, PermissionDeniedError]
    if spec.touches_devices:
        found.append(DeviceError)
    if not spec.public:
        found.append(AuthRequiredError)
    return tuple(found)


@attrs.frozen
class MethodSpec:
    name: str
    summary: str
    #: The API group that must be enabled for this method; None: always available.
    group: str | None
    params: tuple[Param, ...]
    result: Schema
    handler: Handler
    #: Whether a device failure (-32001) can end it.
    touches_devices: bool = attrs.field(kw_only=True)
    #: Callable before a caller that must authenticate has done so.
    public: bool = attrs.field(default=False, kw_only=True)
    param_names: frozenset[str] = attrs.field(init=False)
    required: tuple[str, ...] = attrs.field(init=False)
    #: The errors it can end in, for the OpenRPC document.
    errors: tuple[type[ZeusdError], ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))
        object.__setattr__(self, "required", tuple(p.name for p in self.params if p.required))
        object.__setattr__(self, "errors", _errors(self))


def object_schema(**properties: Schema) -> Schema:
    """An object with exactly these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def keyed_by(kind: str, value: Schema) -> Schema:
    """An object keyed by device id (as a string), e.g. ``keyed_by("GPU", ...)``."""
    return {"type": "object", "description": f"Keyed by {kind} id.", "additionalProperties": value}


INT: Schema = {"type": "integer"}
NULLABLE_INT: Schema = {"type": ["integer", "null"]}
STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
ID_LIST: Schema = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
    "uniqueItems": True,
}
