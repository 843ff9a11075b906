"""Whether a session may call a method at all; checked before params are even looked at.

The one place for access rules, so that every method goes through the same gate. In order:

1. the method's API group must be enabled (-32004);
2. on a transport that requires a token, only the methods a client needs to find the daemon
   and to log in are open before ``session.authenticate`` succeeds (-32005);
3. a session whose token has expired, on any transport, is locked the same way (-32005);
4. an authenticated session may call only the groups its token's scopes list (-32002);
5. ``gpu-control`` is limited to root and the ``--control-uids``/``--control-gids`` when
   either is set (-32002), token or not: on a Unix socket a token only narrows what the
   peer's uid may do. Reads stay open.
"""

from __future__ import annotations

from zeusd.core.errors import AuthRequiredError, GroupDisabledError, PermissionDeniedError
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.core.spec import GPU_CONTROL, MethodSpec


def check_access(policy: Policy, session: Session, spec: MethodSpec) -> None:
    """Raise the ZeusdError that refuses *spec* to *session*, or return."""
    check_group(policy, session, spec.name, spec.group, public=spec.public)


def check_group(
    policy: Policy, session: Session, name: str, group: str | None, *, public: bool = False
) -> None:
    """The same gate for *name*, open to whoever may call the methods of *group*; also for
    what is not a method (``GET /metrics`` is open to whoever may call gpu-read)."""
    if group is not None and group not in policy.enabled_groups:
        raise GroupDisabledError(name, group)
    if public:
        return
    if policy.requires_token(session.transport) and not session.authenticated:
        raise AuthRequiredError(
            f"this connection must call session.authenticate with a token before {name}"
        )
    if expired(policy, session):
        raise AuthRequiredError("the session's token has expired; authenticate again")
    if group is None:
        return
    reason = refusal(policy, session, group)
    if reason is not None:
        raise PermissionDeniedError(name, reason)


def expired(policy: Policy, session: Session) -> bool:
    """Whether *session* authenticated with a token that has expired since."""
    return session.expires_at is not None and policy.wall_clock() >= session.expires_at


def refusal(policy: Policy, session: Session, group: str) -> str | None:
    """Why *session* may not call methods of *group* (enabled or not), or None."""
    if session.scopes is not None and group not in session.scopes:
        granted = ", ".join(session.scopes) or "none"
        return f"the token of {session.subject!r} does not grant '{group}' (it grants: {granted})"
    if session.uid == 0:
        return None  # root can do all of this with nvidia-smi anyway
    if session.scopes is not None and session.uid is None:
        return None  # TCP: the token is the only identity there is
    if group != GPU_CONTROL or not policy.restricts_control:
        return None
    if session.uid is None:
        return (
            f"'{group}' is limited to certain users and this {session.transport} connection "
            f"carries no user identity"
            + ("; authenticate with a token" if policy.token_key is not None else "")
        )
    if session.uid in policy.control_uids or not policy.control_gids.isdisjoint(session.groups):
        return None
    return (
        f"'{group}' is allowed to root and {describe_allowed(policy)} "
        f"(you are uid {session.uid}, groups {', '.join(map(str, session.groups)) or 'none'})"
    )


def describe_allowed(policy: Policy) -> str:
    parts = []
    if policy.control_uids:
        parts.append("uids " + ", ".join(map(str, sorted(policy.control_uids))))
    if policy.control_gids:
        parts.append("gids " + ", ".join(map(str, sorted(policy.control_gids))))
    return " and ".join(parts) or "nobody else"


def allowed_groups(policy: Policy, session: Session) -> list[str]:
    """The enabled groups *session* may call right now, for ``session.whoami``."""
    if policy.requires_token(session.transport) and not session.authenticated:
        return []
    if expired(policy, session):
        return []
    return [g for g in policy.enabled_groups if refusal(policy, session, g) is None]
