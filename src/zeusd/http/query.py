"""Query strings to method params, typed by the method table's schemas.

``gpu_ids``/``cpu_ids`` are comma lists (``0,1``), integers are decimal, booleans are
``true``/``false``. A value that does not parse is -32602 naming the param; a key the method
does not know is passed on unchanged, so the core refuses it as it refuses any unknown param.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from zeusd.core.errors import InvalidParamsError
from zeusd.core.spec import MethodSpec

_DECIMAL = re.compile(r"-?[0-9]+")


def split_query(query: str) -> dict[str, str]:
    """``a=1&b=2`` as a dict; a key given twice is refused."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidParamsError("query", "the query string is not UTF-8") from None
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidParamsError(key, f"'{key}' is given twice")
        found[key] = value
    return found


def _integer(name: str, text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise InvalidParamsError(name, f"'{name}' must be a decimal integer (got {text!r})")
    return int(text)


def _boolean(name: str, text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise InvalidParamsError(name, f"'{name}' must be true or false (got {text!r})")


def _ids(name: str, text: str) -> list[int]:
    if not text.strip():
        return []  # the core says why an empty list is refused
    ids = []
    for part in text.split(","):
        item = part.strip()
        if not _DECIMAL.fullmatch(item):
            raise InvalidParamsError(
                name, f"'{name}' must be a comma list of decimal ids, like 0,1 (got {text!r})"
            )
        ids.append(int(item))
    return ids


def typed(name: str, schema: dict[str, Any], text: str) -> Any:
    """*text* as the value *schema* describes."""
    kind = schema.get("type")
    if kind == "array":
        return _ids(name, text)
    if kind == "integer":
        return _integer(name, text)
    if kind == "boolean":
        return _boolean(name, text)
    return text


def params_of(spec: MethodSpec, raw: dict[str, str]) -> dict[str, Any]:
    """The params of a call of *spec* from query values *raw*."""
    schemas = {p.name: p.schema for p in spec.params}
    return {
        key: typed(key, schemas[key], value) if key in schemas else value
        for key, value in raw.items()
    }


def flag(raw: dict[str, str], name: str, default: bool) -> bool:
    """Remove and return the boolean *name* (a front-end option such as ``block``)."""
    text = raw.pop(name, None)
    return default if text is None else _boolean(name, text)
