"""Whether a session may call a method at all; checked before params are even looked at.

The one place for access rules, so that every method goes through the same gate.
"""

from __future__ import annotations

from zeusd.rpc.context import Context
from zeusd.rpc.errors import GroupDisabledError
from zeusd.rpc.methods import MethodSpec
from zeusd.rpc.session import Session


def check_access(context: Context, session: Session, spec: MethodSpec) -> None:
    """Raise the RpcError that refuses *spec* to *session*, or return."""
    if spec.group is not None and spec.group not in context.enabled_groups:
        raise GroupDisabledError(spec.name, spec.group)
