"""Checks shared by every method's params: JSON integers, id lists, readable messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypeVar

from zeusd.core.errors import InvalidParamsError
from zeusd.core.omitted import OMITTED

T = TypeVar("T")


def show(value: object) -> str:
    """*value* as the client wrote it (JSON), shortened for error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: object) -> bool:
    """JSON integers only: ``True`` and ``300000.0`` are not integers here."""
    return type(value) is int


def check_int(name: str, value: object, low: int, high: int, where: str = "") -> int:
    """Return *value* if it is an integer in [low, high], else raise InvalidParamsError."""
    if not is_int(value):
        raise InvalidParamsError(name, f"'{name}' must be an integer (got {show(value)})")
    assert isinstance(value, int)
    if not low <= value <= high:
        raise InvalidParamsError(
            name, f"'{name}' must be in [{low}, {high}]{where} (got {value})", min=low, max=high
        )
    return value


def resolve_ids(param: str, kind: str, ids: object, known: Mapping[int, T]) -> tuple[T, ...]:
    """Validate an id-list param (``gpu_ids``, ``cpu_ids``) against the *known* devices.

    Omitted means every device, in id order; otherwise a non-empty list of distinct,
    known integer ids, returned in the client's order. *kind* names the devices ("GPU").
    """
    if ids is OMITTED:
        return tuple(known.values())
    if not isinstance(ids, list):
        raise InvalidParamsError(param, f"'{param}' must be a list of {kind} ids (got {show(ids)})")
    if not ids:
        raise InvalidParamsError(param, f"'{param}' must not be empty")
    seen: set[int] = set()
    targets = []
    for device in ids:
        if not is_int(device):
            raise InvalidParamsError(
                param, f"'{param}' must hold integer {kind} ids (got {show(device)})"
            )
        if device in seen:
            raise InvalidParamsError(param, f"{kind} {device} is listed twice in '{param}'")
        target = known.get(device)
        if target is None:
            names = ", ".join(str(i) for i in known) or "none"
            raise InvalidParamsError(
                param, f"unknown {kind} {device} (this node's {kind}s: {names})"
            )
        seen.add(device)
        targets.append(target)
    return tuple(targets)
