"""Calling a method: the one way in for every front end.

:func:`start` runs, synchronously and in this order, the access gate, the param check and
the handler (which validates its params against every target and queues the device work),
so that whatever front end a request came through, it is checked, ordered and audited the
same way. What the caller gets back is the result value, or an awaitable of it (a
:class:`~zeusd.core.later.Later` for device work, chained with no task in between); a failure
is always a :class:`~zeusd.core.errors.ZeusdError` (a bug becomes an InternalError, logged
with its traceback here).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from zeusd.core.access import check_access
from zeusd.core.audit import record_write
from zeusd.core.context import Context
from zeusd.core.errors import (
    DeviceError,
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    ZeusdError,
)
from zeusd.core.later import Later
from zeusd.core.observer import OK
from zeusd.core.session import Session
from zeusd.core.spec import GPU_CONTROL, MethodSpec

log = logging.getLogger(__name__)


def bind(spec: MethodSpec, params: object) -> dict[str, Any]:
    """The handler's keyword arguments: no unknown names, required ones there, defaults in."""
    if not isinstance(params, dict):
        raise InvalidParamsError("params", "params must be given by name, as a JSON object")
    unknown = params.keys() - spec.param_names
    if unknown:
        name = sorted(unknown)[0]
        accepted = ", ".join(sorted(spec.param_names)) or "none"
        raise InvalidParamsError(
            name, f"unknown param '{name}' for {spec.name} (accepted: {accepted})"
        )
    for name in spec.required:
        if name not in params:
            raise InvalidParamsError(name, f"missing required param '{name}'")
    return {p.name: params.get(p.name, p.default) for p in spec.params}


def as_error(spec: MethodSpec, exc: Exception) -> ZeusdError:
    """*exc* as the error a client is shown; anything but a ZeusdError is a bug, logged."""
    if isinstance(exc, ZeusdError):
        return exc
    log.error("internal error in %s", spec.name, exc_info=exc)
    return InternalError(exc)


def start(
    context: Context, session: Session, spec: MethodSpec, params: object
) -> Any | Awaitable[Any]:
    """Check and start one call of *spec* by *session*; raises ZeusdError.

    Everything that decides the order of device work happens before this returns.
    """
    began = time.monotonic()
    try:
        check_access(context.policy, session, spec)
        value = spec.handler(context, session, **bind(spec, params))
    except Exception as exc:
        raise _failed(context, spec, session, params, exc, began) from None
    if isinstance(value, Later):
        return value.then(functools.partial(_done, context, spec, session, params, began))
    if inspect.isawaitable(value):
        return _finish(context, spec, session, params, value, began)
    _ended(context, spec, session, params, value, began)
    return value


def _done(
    context: Context,
    spec: MethodSpec,
    session: Session,
    params: object,
    began: float,
    later: Later[Any],
) -> Any:
    """The call's outcome once its device work is done: audited, an error made a ZeusdError."""
    try:
        value = later.get()
    except Exception as exc:
        raise _failed(context, spec, session, params, exc, began) from None
    _ended(context, spec, session, params, value, began)
    return value


async def _finish(
    context: Context,
    spec: MethodSpec,
    session: Session,
    params: object,
    pending: Awaitable[Any],
    began: float,
) -> Any:
    try:
        value = await pending
    except Exception as exc:
        raise _failed(context, spec, session, params, exc, began) from None
    _ended(context, spec, session, params, value, began)
    return value


def _failed(
    context: Context,
    spec: MethodSpec,
    session: Session,
    params: object,
    exc: Exception,
    began: float,
) -> ZeusdError:
    """The ZeusdError a failed call ends in, audited and observed."""
    error = as_error(spec, exc)
    _ended(context, spec, session, params, error, began)
    return error


def _ended(
    context: Context,
    spec: MethodSpec,
    session: Session,
    params: object,
    outcome: Any,
    began: float,
) -> None:
    """Audit a write, and tell the observer how the call ended."""
    seconds = time.monotonic() - began
    failed = isinstance(outcome, ZeusdError)
    observer = context.observer
    observer.call_finished(spec.name, outcome.code if failed else OK, seconds)
    if spec.group != GPU_CONTROL:
        return
    record_write(session, spec.name, params, outcome, seconds)
    applied = outcome.data["succeeded"] if isinstance(outcome, DeviceError) else ()
    if not failed and isinstance(outcome, dict):
        applied = outcome.get("applied", ())
    for gpu in applied:
        observer.gpu_written(gpu, spec.name)


def lookup(methods: Mapping[str, MethodSpec], name: str) -> MethodSpec:
    """The spec of *name*; raises MethodNotFoundError."""
    spec = methods.get(name)
    if spec is None:
        raise MethodNotFoundError(name)
    return spec
