"""The OpenRPC document ``rpc.discover`` returns, generated from the method table."""

from __future__ import annotations

import functools
from typing import Any

from zeusd.core import errors
from zeusd.core.methods import MethodSpec, build_methods

OPENRPC_VERSION = "1.2.6"

_ERRORS: dict[str, dict[str, Any]] = {
    "InvalidParams": {
        "code": errors.INVALID_PARAMS,
        "message": "Invalid params",
        "data": {"param": "name of the offending param", "reason": "why it was refused"},
    },
    "DeviceError": {
        "code": errors.DEVICE_ERROR,
        "message": "Device error",
        "data": {"succeeded": [], "errors": {"<gpu id>": {"nvml_error": "", "message": ""}}},
    },
    "PermissionDenied": {
        "code": errors.PERMISSION_DENIED,
        "message": "Permission denied",
        "data": {"method": "the method refused", "reason": "who is allowed"},
    },
    "AuthenticationRequired": {
        "code": errors.AUTH_REQUIRED,
        "message": "Authentication required",
        "data": {"reason": "why: not authenticated, token refused or expired"},
    },
}
#: Errors of methods outside the API groups (the ``session.`` family).
_SESSION_ERRORS = {"session.authenticate": ("InvalidParams", "AuthenticationRequired")}


def _method(spec: MethodSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": spec.name,
        "summary": spec.summary,
        "paramStructure": "by-name",
        "params": [
            {
                "name": p.name,
                "description": p.description,
                "required": p.required,
                "schema": p.schema,
            }
            for p in spec.params
        ],
        "result": {"name": "result", "schema": spec.result},
    }
    if spec.group is not None:
        doc["x-api-group"] = spec.group
        doc["errors"] = [{"$ref": f"#/components/errors/{name}"} for name in _ERRORS]
    elif spec.name in _SESSION_ERRORS:
        doc["errors"] = [
            {"$ref": f"#/components/errors/{name}"} for name in _SESSION_ERRORS[spec.name]
        ]
    return doc


@functools.cache
def openrpc_document(version: str) -> dict[str, Any]:
    """Build (once) the OpenRPC description of every method."""
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "zeusd",
            "version": version,
            "description": "GPU energy control over line-delimited JSON-RPC 2.0.",
        },
        "methods": [_method(spec) for spec in build_methods().values()],
        "components": {"errors": _ERRORS},
    }
