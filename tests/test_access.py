"""The access gate as a pure function of context, session and method."""

from __future__ import annotations

from typing import Any

import pytest

from zeusd.core.access import allowed_groups, check_access
from zeusd.core.errors import AuthRequiredError, GroupDisabledError, PermissionDeniedError
from zeusd.core.methods import build_methods
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.gpu.backend import NvmlBackend
from zeusd.rpc.openrpc import with_rpc_discover
from zeusd.sim import SimNvml, default_sim_gpus

METHODS = with_rpc_discover(build_methods())
_backend = NvmlBackend.open(SimNvml(default_sim_gpus(1)), name="sim")


def _context(**kwargs: Any) -> Policy:
    return Policy(**({"enabled_groups": ("gpu-control", "gpu-read")} | kwargs))


WRITE = METHODS["gpu.set_power_limit"]
READ = METHODS["gpu.get_power"]


def test_everyone_may_do_everything_by_default() -> None:
    """Without policy flags, any local user may write."""
    check_access(_context(), Session(transport="uds", uid=1000, gid=1000), WRITE)


def test_root_is_always_allowed() -> None:
    """uid 0 passes --control-uids even when not listed."""
    ctx = _context(control_uids=frozenset({5}))
    check_access(ctx, Session(transport="uds", uid=0, gid=0, groups=(0,)), WRITE)


def test_supplementary_group_counts() -> None:
    """Membership through a supplementary group satisfies --control-gids."""
    ctx = _context(control_gids=frozenset({77}))
    check_access(ctx, Session(transport="uds", uid=1000, gid=1000, groups=(1000, 77)), WRITE)
    with pytest.raises(PermissionDeniedError):
        check_access(ctx, Session(transport="uds", uid=1000, gid=77, groups=(1000,)), WRITE)


def test_reads_stay_open_under_control_policy() -> None:
    """--control-uids limits writes only."""
    ctx = _context(control_uids=frozenset({5}))
    session = Session(transport="uds", uid=1000, gid=1000)
    check_access(ctx, session, READ)
    assert allowed_groups(ctx, session) == ["gpu-read"]


def test_unidentified_tcp_cannot_write_under_policy() -> None:
    """A TCP peer has no uid, so a uid policy refuses it gpu-control."""
    ctx = _context(control_uids=frozenset({5}))
    with pytest.raises(PermissionDeniedError, match="no user identity"):
        check_access(ctx, Session(transport="tcp"), WRITE)


def test_disabled_group_is_checked_before_auth() -> None:
    """A disabled group answers -32004 even before authentication."""
    ctx = _context(enabled_groups=("gpu-read",), token_transports=frozenset({"tcp"}))
    with pytest.raises(GroupDisabledError):
        check_access(ctx, Session(transport="tcp"), WRITE)
    with pytest.raises(AuthRequiredError):
        check_access(ctx, Session(transport="tcp"), READ)


@pytest.mark.parametrize("name", ["discover", "time", "rpc.discover", "session.authenticate"])
def test_open_before_auth(name: str) -> None:
    """The four methods a client needs to find the daemon and log in stay open."""
    ctx = _context(token_transports=frozenset({"tcp"}))
    check_access(ctx, Session(transport="tcp"), METHODS[name])


def test_unix_socket_needs_no_token() -> None:
    """--token-key requires tokens on TCP only; Unix peers are identified by the kernel."""
    ctx = _context(token_transports=frozenset({"tcp"}))
    check_access(ctx, Session(transport="uds", uid=1000, gid=1000), WRITE)


def _token_session(uid: int | None, scopes: tuple[str, ...], expires_at: int | None = None) -> Any:
    transport = "tcp" if uid is None else "uds"
    return Session(
        transport=transport, uid=uid, gid=uid, subject="s", scopes=scopes, expires_at=expires_at
    )


def test_token_does_not_widen_a_unix_peer() -> None:
    """A uid outside --control-uids stays refused gpu-control with a gpu-control token."""
    ctx = _context(control_uids=frozenset({5}), token_transports=frozenset({"tcp"}))
    session = _token_session(1000, ("gpu-control", "gpu-read"))
    with pytest.raises(PermissionDeniedError, match="uid 1000"):
        check_access(ctx, session, WRITE)
    assert allowed_groups(ctx, session) == ["gpu-read"]


def test_token_narrows_a_unix_peer() -> None:
    """A listed uid (and root) with a gpu-read token may no longer write."""
    ctx = _context(control_uids=frozenset({5}))
    for uid in (5, 0):
        with pytest.raises(PermissionDeniedError, match="does not grant 'gpu-control'"):
            check_access(ctx, _token_session(uid, ("gpu-read",)), WRITE)
    check_access(ctx, _token_session(5, ("gpu-control",)), WRITE)


def test_tcp_token_is_the_identity() -> None:
    """On TCP, a gpu-control token writes even under a uid policy (there is no uid)."""
    ctx = _context(control_uids=frozenset({5}), token_transports=frozenset({"tcp"}))
    check_access(ctx, _token_session(None, ("gpu-control",)), WRITE)


@pytest.mark.parametrize("uid", [None, 1000, 0])
def test_expired_token_locks_every_transport(uid: int | None) -> None:
    """After exp, the session is -32005 on UDS (root too) and TCP, and whoami lists nothing."""
    now = [1000.0]
    ctx = _context(token_transports=frozenset({"tcp"}), wall_clock=lambda: now[0])
    session = _token_session(uid, ("gpu-control", "gpu-read"), expires_at=1010)
    check_access(ctx, session, READ)
    now[0] = 1010.0
    for spec in (READ, WRITE, METHODS["session.whoami"]):
        with pytest.raises(AuthRequiredError, match="expired"):
            check_access(ctx, session, spec)
    assert allowed_groups(ctx, session) == []
    check_access(ctx, session, METHODS["session.authenticate"])  # to log in again
