"""The ``session.`` methods: who am I, log in with a token, undo my changes when I leave."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from zeusd import tokens
from zeusd.core.access import allowed_groups
from zeusd.core.context import Context
from zeusd.core.errors import AuthRequiredError, DeviceError, InvalidParamsError, failure_detail
from zeusd.core.params import show
from zeusd.core.session import Session
from zeusd.core.spec import NULLABLE_INT, STRINGS, MethodSpec, Param, object_schema
from zeusd.gpu.lanes import Job, LaneClosedError, LaneFullError
from zeusd.logfmt import clip

log = logging.getLogger(__name__)


def _whoami(ctx: Context, session: Session) -> dict[str, Any]:
    return {
        "transport": session.transport,
        "pid": session.pid,
        "uid": session.uid,
        "gid": session.gid,
        "subject": session.subject,
        "allowed_groups": allowed_groups(ctx.policy, session),
        "restore_on_close": session.restore_on_close,
    }


def _authenticate(ctx: Context, session: Session, token: object) -> dict[str, Any]:
    if ctx.policy.token_key is None:
        raise AuthRequiredError("this daemon has no --token-key: tokens cannot be checked")
    try:
        # A non-string token is not a token: -32005 like any other bad token.
        claims = tokens.verify(ctx.policy.token_key, token, now=ctx.policy.wall_clock())
    except tokens.TokenError as exc:
        log.warning("%s: authentication refused: %s", session.describe(), clip(str(exc)))
        raise AuthRequiredError(str(exc)) from None
    session.subject = claims.subject
    session.scopes = claims.scopes
    session.expires_at = claims.expires_at
    log.info(
        "%s connection #%d authenticated as '%s' (scopes: %s)",
        session.transport,
        session.id,
        clip(claims.subject),
        clip(", ".join(claims.scopes) or "none"),
    )
    return {
        "subject": claims.subject,
        "scopes": list(claims.scopes),
        "expires_at": claims.expires_at,
    }


def _set_restore_on_close(
    ctx: Context, session: Session, enabled: object
) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    if not isinstance(enabled, bool):
        raise InvalidParamsError(
            "enabled", f"'enabled' must be true or false (got {show(enabled)})"
        )
    session.restore_on_close = enabled
    # Changes already made are marked too, on disk as well, before the reply.
    try:
        jobs = ctx.ledger.set_restore(session.id, enabled, ctx.lanes)
    except LaneClosedError as exc:
        raise DeviceError(succeeded=[], errors={0: failure_detail(exc) or {}}) from None
    except LaneFullError as exc:
        raise InvalidParamsError("enabled", f"{exc} (--max-queued-per-gpu {exc.limit})") from None
    if not jobs:
        return {"restore_on_close": enabled}
    return _after(ctx, jobs, {"restore_on_close": enabled})


async def _after(
    ctx: Context, jobs: list[tuple[int, Job]], result: dict[str, Any]
) -> dict[str, Any]:
    for _, job in jobs:  # the lanes run on their own: waiting in turn costs nothing
        await job.wait()
    return result


def session_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            "session.whoami",
            "What the daemon knows about this connection and what it may call.",
            None,
            (),
            object_schema(
                transport={"enum": ["uds", "tcp"]},
                pid=NULLABLE_INT,
                uid=NULLABLE_INT,
                gid=NULLABLE_INT,
                subject={"type": ["string", "null"]},
                allowed_groups=STRINGS,
                restore_on_close={"type": "boolean"},
            ),
            _whoami,
            touches_devices=False,
        ),
        MethodSpec(
            "session.authenticate",
            "Present a token issued by 'zeusd token issue'; required first on TCP with "
            "--token-key.",
            None,
            (Param("token", {"type": "string"}, "The token.", required=True),),
            object_schema(subject={"type": "string"}, scopes=STRINGS, expires_at=NULLABLE_INT),
            _authenticate,
            touches_devices=False,
            public=True,
        ),
        MethodSpec(
            "session.set_restore_on_close",
            "When this connection closes, put back every GPU setting it changed (unless "
            "another connection changed it later).",
            None,
            (Param("enabled", {"type": "boolean"}, "true to restore on close.", required=True),),
            object_schema(restore_on_close={"type": "boolean"}),
            _set_restore_on_close,
            touches_devices=False,
        ),
    ]
