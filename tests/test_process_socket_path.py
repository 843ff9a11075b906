"""The socket path against a real unprivileged user who controls part of it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator

import attrs
import pytest

from process_helpers import run_zeusd, running_daemon, short_tempdir

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating users and chowning needs root"),
]


@attrs.frozen
class Account:
    name: str
    uid: int
    gid: int


@pytest.fixture
def user() -> Iterator[Account]:
    """A fresh unprivileged user, deleted afterwards."""
    name = f"zdp{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-U", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        ids = [
            subprocess.run(["id", flag, name], capture_output=True, text=True, check=True)
            for flag in ("-u", "-g")
        ]
        yield Account(name, int(ids[0].stdout), int(ids[1].stdout))
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def base() -> Iterator[str]:
    path = short_tempdir()
    os.chmod(path, 0o755)  # the test user must be able to reach what it owns inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stale_socket(path: str) -> None:
    """A socket file nobody listens on: exactly what zeusd removes when it is in its way."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()


def _victim(base: str) -> str:
    """A root-only directory holding a stale socket named like the daemon's."""
    victim = os.path.join(base, "victim")
    os.mkdir(victim, 0o700)
    _stale_socket(os.path.join(victim, "z.sock"))
    return victim


def _zeusd(socket_path: str) -> subprocess.CompletedProcess[str]:
    try:
        return run_zeusd(
            "--gpu-backend",
            "sim",
            "--rapl-root=/nonexistent",
            "--socket-path",
            socket_path,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"zeusd started with --socket-path {socket_path}")


def test_parent_owned_by_an_unprivileged_user_is_refused(base: str, user: Account) -> None:
    """A socket directory another user owns stops start-up, touching nothing in it."""
    parent = os.path.join(base, "owned")
    os.mkdir(parent, 0o755)
    os.chown(parent, user.uid, user.gid)
    _stale_socket(os.path.join(parent, "z.sock"))
    done = _zeusd(os.path.join(parent, "z.sock"))
    assert done.returncode != 0
    assert f"{parent} is owned by uid {user.uid}" in done.stderr
    assert "listening on" not in done.stderr
    assert os.path.exists(os.path.join(parent, "z.sock"))  # not even the stale socket


def test_swapping_a_users_directory_and_symlink_cannot_make_root_unlink(
    base: str, user: Account
) -> None:
    """The user swaps its `s` between a directory and a symlink to a root-only directory
    while zeusd starts again and again: every start is refused, the victim stays."""
    victim = _victim(base)
    parent = os.path.join(base, "owned")
    os.mkdir(parent, 0o755)
    os.chown(parent, user.uid, user.gid)
    swap = f"cd {parent} && while :; do rm -rf s; mkdir s; rm -rf s; ln -s {victim} s; done"
    swapper = subprocess.Popen(
        ["/bin/sh", "-c", swap],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    try:
        for _ in range(8):
            done = _zeusd(os.path.join(parent, "s", "z.sock"))
            assert done.returncode != 0
            assert "refusing socket path" in done.stderr, done.stderr
    finally:
        swapper.kill()
        swapper.wait()
    assert os.path.exists(os.path.join(victim, "z.sock"))


def test_users_symlink_in_a_sticky_directory_is_not_followed(base: str, user: Account) -> None:
    """In a /tmp-like sticky directory, a link planted by another user is refused."""
    victim = _victim(base)
    sticky = os.path.join(base, "tmp")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    link = os.path.join(sticky, "zeusd")
    subprocess.run(
        ["ln", "-s", victim, link], user=user.uid, group=user.gid, extra_groups=[], check=True
    )
    done = _zeusd(os.path.join(link, "z.sock"))
    assert done.returncode != 0
    assert f"symlink {link} is owned by uid {user.uid}" in done.stderr
    assert os.path.exists(os.path.join(victim, "z.sock"))


def test_socket_directly_in_a_sticky_directory_works(base: str) -> None:
    """A root-owned sticky directory is trusted: others can add names but not swap ours."""
    sticky = os.path.join(base, "tmp")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    path = os.path.join(sticky, "z.sock")
    with running_daemon(socket_path=path) as daemon, daemon.connect() as client:
        assert daemon.address == f"unix:{path}"
        assert client.result("time")["timestamp_ms"] > 0
    assert not os.path.exists(path)  # removed at exit
