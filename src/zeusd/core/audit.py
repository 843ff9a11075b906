"""The audit trail: one log record per write request, whatever became of it.

Each record says who asked (pid/uid or token subject), the method and params, each GPU's
outcome (or why the request was refused before any GPU was touched) and how long it took.
The structured fields travel in the record's ``audit`` attribute, which the JSON log format
writes out as they are.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from zeusd.core.errors import DEVICE_ERROR, ZeusdError
from zeusd.core.session import Session

log = logging.getLogger("zeusd.audit")

#: Params longer than this (as JSON) are logged cut short: a client must not be able to
#: write a megabyte into the audit log with every refused request.
MAX_PARAMS_CHARS = 1000


def _loggable(params: Any) -> Any:
    try:
        text = json.dumps(params, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(params)
    if len(text) <= MAX_PARAMS_CHARS:
        return params
    return {"truncated": text[:MAX_PARAMS_CHARS], "length": len(text)}


def outcome_of(result: Any) -> dict[str, Any]:
    """``{"status": ..., "gpus": {"<id>": "ok" | error}}`` from a write's result or error."""
    if not isinstance(result, ZeusdError):
        applied = result.get("applied", []) if isinstance(result, dict) else []
        return {"status": "ok", "gpus": {str(gpu): "ok" for gpu in applied}}
    data = result.data if isinstance(result.data, dict) else {}
    if result.code == DEVICE_ERROR and "succeeded" in data:
        gpus: dict[str, Any] = {str(gpu): "ok" for gpu in data["succeeded"]}
        gpus.update(data.get("errors", {}))
        return {"status": "device error", "gpus": gpus}
    reason = data.get("reason", result.message)
    return {"status": "refused", "code": result.code, "reason": str(reason)[:MAX_PARAMS_CHARS]}


def record_write(session: Session, method: str, params: Any, result: Any, seconds: float) -> None:
    """Log one write: *result* is its result value, or the ZeusdError it ended in."""
    outcome = outcome_of(result)
    fields = {
        **session.identity(),
        "method": method,
        "params": _loggable(params),
        **outcome,
        "duration_ms": round(seconds * 1000, 3),
    }
    log.info(
        "write %s by %s: %s %s in %.1f ms",
        method,
        session.describe(),
        outcome["status"],
        json.dumps(outcome.get("gpus", outcome.get("reason")), separators=(",", ":")),
        seconds * 1000,
        extra={"audit": fields},
    )


def record_start_restore(
    gpu: int, setting: str, value: Any, changed_by: str, error: dict[str, str] | None
) -> None:
    """The audit record of a setting put back at start-up, after a daemon that crashed."""
    fields = {
        "session": None,
        "transport": None,
        "pid": None,
        "uid": None,
        "gid": None,
        "subject": None,
        "method": "restore_after_unclean_exit",
        "params": {"gpu_id": gpu, "setting": setting, "value": value, "changed_by": changed_by},
        "status": "ok" if error is None else "device error",
        "gpus": {str(gpu): "ok" if error is None else error},
    }
    log.info(
        "restore after an unclean exit: GPU %d %s to %s (changed by %s): %s",
        gpu,
        setting,
        json.dumps(value),
        changed_by,
        "ok" if error is None else json.dumps(error, separators=(",", ":")),
        extra={"audit": fields},
    )
