"""``rpc.discover``: the OpenRPC document, generated from the method table, errors included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zeusd.core import errors
from zeusd.core.context import Context
from zeusd.core.session import Session
from zeusd.core.spec import MethodSpec

OPENRPC_VERSION = "1.2.6"

#: Every error a method can name, in the order the document lists them.
ERRORS: tuple[type[errors.ZeusdError], ...] = (
    errors.InvalidParamsError,
    errors.DeviceError,
    errors.PermissionDeniedError,
    errors.GroupDisabledError,
    errors.AuthRequiredError,
)


def _error_component(error: type[errors.ZeusdError]) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "data": error.doc_data}


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
    doc["errors"] = [{"$ref": f"#/components/errors/{error.doc_name}"} for error in spec.errors]
    return doc


def openrpc_document(version: str, methods: Mapping[str, MethodSpec]) -> dict[str, Any]:
    """The OpenRPC description of *methods*."""
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "zeusd",
            "version": version,
            "description": "GPU energy control over line-delimited JSON-RPC 2.0.",
        },
        "methods": [_method(spec) for spec in methods.values()],
        "components": {"errors": {e.doc_name: _error_component(e) for e in ERRORS}},
    }


def with_rpc_discover(methods: Mapping[str, MethodSpec]) -> dict[str, MethodSpec]:
    """*methods* with ``rpc.discover`` (after ``time``), which describes all of them."""
    document: dict[str, Any] = {}

    def discover(ctx: Context, session: Session) -> dict[str, Any]:
        if not document:  # built once, on first use
            document.update(openrpc_document(ctx.version, table))
        return document

    spec = MethodSpec(
        "rpc.discover",
        "This OpenRPC document.",
        None,
        (),
        {"type": "object", "description": "An OpenRPC 1.2 document."},
        discover,
        touches_devices=False,
        public=True,
    )
    table: dict[str, MethodSpec] = {}
    for name, method in methods.items():
        table[name] = method
        if name == "time":
            table[spec.name] = spec
    table.setdefault(spec.name, spec)
    return table
