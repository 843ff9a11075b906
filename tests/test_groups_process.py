"""--control-gids against real unprivileged users whose allowed group is only supplementary."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from process_helpers import (
    SOCAT,
    error_of,
    lines,
    parse_output,
    request,
    result_of,
    running_daemon,
    short_tempdir,
)

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating users and groups needs root"),
]

_WRITE = request("gpu.set_power_limit", "w", gpu_ids=[0], power_limit_mw=300_000)
_WHOAMI = request("session.whoami", "me")


@attrs.frozen
class Account:
    name: str
    uid: int
    gid: int


@attrs.frozen
class Accounts:
    member: Account
    outsider: Account
    #: The allowed group: `member` has it only as a supplementary group (from /etc/group).
    gpu_gid: int
    gpu_group: str


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _add_user(name: str) -> None:
    # -U: a primary group of its own, so the allowed group can only be supplementary.
    _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-U", name)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    """Two fresh unprivileged users and a `gpu`-like group that only the first is in."""
    suffix = secrets.token_hex(3)
    group, member, outsider = f"zdg{suffix}", f"zdm{suffix}", f"zdo{suffix}"
    made_users: list[str] = []
    _run("groupadd", group)
    try:
        for name in (member, outsider):
            _add_user(name)
            made_users.append(name)
        _run("usermod", "-a", "-G", group, member)
        gpu_gid = int(
            subprocess.run(
                ["getent", "group", group], capture_output=True, text=True, check=True
            ).stdout.split(":")[2]
        )
        yield Accounts(_lookup(member), _lookup(outsider), gpu_gid, group)
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", group], capture_output=True, check=False)


def _lookup(name: str) -> Account:
    uid = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
    gid = subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True)
    return Account(name, int(uid.stdout), int(gid.stdout))


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = short_tempdir()
    os.chmod(path, 0o755)  # the test users' clients must reach the socket inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _socat_as(prefix: list[str], path: str, data: bytes) -> dict[Any, Any]:
    done = subprocess.run(
        [*prefix, SOCAT, "-t", "2", "-", f"UNIX-CONNECT:{path}"],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return {reply["id"]: reply for reply in parse_output(done.stdout)}


def _start(sock_dir: str, gid: int) -> Any:
    return running_daemon(
        "--control-gids", str(gid), socket_path=os.path.join(sock_dir, "zeusd.sock")
    )


def test_supplementary_group_member_may_write(accounts: Accounts, sock_dir: str) -> None:
    """A user whose --control-gids group is only supplementary (runuser, /etc/group) writes."""
    member = accounts.member
    assert member.gid != accounts.gpu_gid
    path = os.path.join(sock_dir, "zeusd.sock")
    with _start(sock_dir, accounts.gpu_gid):
        runuser = ["runuser", "-u", member.name, "--"]
        replies = _socat_as(runuser, path, lines(_WRITE, _WHOAMI))
        assert result_of(replies["w"]) == {"applied": [0]}
        me = result_of(replies["me"])
        assert (me["uid"], me["gid"]) == (member.uid, member.gid)
        assert "gpu-control" in me["allowed_groups"]

        outsider = ["runuser", "-u", accounts.outsider.name, "--"]
        refused = _socat_as(outsider, path, lines(_WRITE))
        reason = error_of(refused["w"], -32002)["data"]["reason"]
        assert f"uid {accounts.outsider.uid}" in reason


def test_allowed_group_past_the_256th_still_counts(accounts: Accounts, sock_dir: str) -> None:
    """A user in 300 groups whose allowed one is the last is still let in (setpriv)."""
    member = accounts.member
    extra = [str(gid) for gid in range(51_000, 51_299)] + [str(accounts.gpu_gid)]
    path = os.path.join(sock_dir, "zeusd.sock")
    with _start(sock_dir, accounts.gpu_gid):
        setpriv = [
            "setpriv",
            f"--reuid={member.uid}",
            f"--regid={member.gid}",
            f"--groups={','.join(extra)}",
            "--",
        ]
        replies = _socat_as(setpriv, path, lines(_WRITE, _WHOAMI))
        assert result_of(replies["w"]) == {"applied": [0]}
        assert result_of(replies["me"])["uid"] == member.uid

        without = ["setpriv", f"--reuid={member.uid}", f"--regid={member.gid}"]
        without += [f"--groups={','.join(extra[:-1])}", "--"]
        error_of(_socat_as(without, path, lines(_WRITE))["w"], -32002)
