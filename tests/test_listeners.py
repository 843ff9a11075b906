"""Opening the listening socket: stale files, live daemons, permissions, addresses."""

from __future__ import annotations

import os
import socket
import stat

import pytest
import trio

from zeusd.server.listeners import (
    StartupError,
    bind_in,
    describe,
    open_socket_dir,
    open_tcp_listener,
    open_unix_listener,
    parse_host_port,
)


async def test_socket_created_with_requested_mode(sock_dir: str) -> None:
    """The socket file has exactly the requested permissions and the umask is restored."""
    path = os.path.join(sock_dir, "z.sock")
    umask_before = os.umask(0o022)
    os.umask(umask_before)
    listener, created = await open_unix_listener(path, 0o600)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    current = os.umask(umask_before)
    assert current == umask_before
    await listener.aclose()
    created.remove()
    assert not os.path.exists(path)


async def test_missing_parent_directory_is_created(sock_dir: str) -> None:
    """A socket path in a directory that does not exist yet still works."""
    path = os.path.join(sock_dir, "run", "zeusd", "z.sock")
    listener, created = await open_unix_listener(path, 0o666)
    assert os.path.exists(path)
    await listener.aclose()
    created.remove()


async def test_stale_socket_is_replaced(sock_dir: str) -> None:
    """A socket file nobody listens on (a crashed daemon's) is removed and re-bound."""
    path = os.path.join(sock_dir, "z.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    listener, created = await open_unix_listener(path, 0o666)
    client = await trio.open_unix_socket(path)
    await client.aclose()
    await listener.aclose()
    created.remove()


async def test_live_socket_is_not_taken_over(sock_dir: str) -> None:
    """If something answers on the path, start-up fails and the file is left alone."""
    path = os.path.join(sock_dir, "z.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    try:
        inode = os.lstat(path).st_ino
        with pytest.raises(StartupError, match="another daemon answered"):
            await open_unix_listener(path, 0o666)
        assert os.lstat(path).st_ino == inode
    finally:
        live.close()


async def test_non_socket_path_is_refused_untouched(sock_dir: str) -> None:
    """A regular file at the path is never deleted."""
    path = os.path.join(sock_dir, "z.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(StartupError, match="not a socket"):
        await open_unix_listener(path, 0o666)
    with open(path) as f:
        assert f.read() == "precious"


async def test_symlink_path_is_refused(sock_dir: str) -> None:
    """A symlink at the socket path is not followed or replaced."""
    target = os.path.join(sock_dir, "target")
    with open(target, "w") as f:
        f.write("x")
    path = os.path.join(sock_dir, "z.sock")
    os.symlink(target, path)
    with pytest.raises(StartupError, match="not a socket"):
        await open_unix_listener(path, 0o666)
    assert os.path.islink(path)


async def test_remove_leaves_a_replaced_file_alone(sock_dir: str) -> None:
    """Shutdown only removes the socket file this daemon created."""
    path = os.path.join(sock_dir, "z.sock")
    listener, created = await open_unix_listener(path, 0o666)
    await listener.aclose()
    # Moved, not deleted, so the new file cannot reuse its inode number.
    os.rename(path, path + ".moved")
    other = socket.socket(socket.AF_UNIX)
    try:
        other.bind(path)
        created.remove()
        assert os.path.exists(path)
    finally:
        other.close()


async def test_tcp_port_zero_reports_bound_port() -> None:
    """Binding port 0 yields a real port, shown in the address string."""
    listener = await open_tcp_listener("127.0.0.1", 0)
    address = describe(listener)
    port = listener.socket.getsockname()[1]
    assert port > 0
    assert address == f"tcp:127.0.0.1:{port}"
    await listener.aclose()


async def test_tcp_port_in_use_is_a_clear_error() -> None:
    """A busy TCP port gives a StartupError that says so."""
    first = await open_tcp_listener("127.0.0.1", 0)
    port = first.socket.getsockname()[1]
    with pytest.raises(StartupError, match="in use"):
        await open_tcp_listener("127.0.0.1", port)
    await first.aclose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4938", ("127.0.0.1", 4938)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT forms, IPv6 in brackets."""
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["4938", ":4938", "host:", "host:port", "host:70000", "h:-1"])
def test_parse_host_port_rejects(text: str) -> None:
    """Malformed addresses are refused with a message."""
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_host_port(text)


async def test_mode_comes_from_creation_not_a_later_chmod(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chmod runs after bind, so the file never exists with a wider mode than asked."""
    modes_at_bind: list[int] = []
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socket_class = type(probe)
    probe.close()
    real_bind = socket_class.bind

    async def spying_bind(self: trio.socket.SocketType, address: str) -> None:
        await real_bind(self, address)
        modes_at_bind.append(stat.S_IMODE(os.lstat(address).st_mode))

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("the socket mode must not be changed after creation")

    monkeypatch.setattr(socket_class, "bind", spying_bind)
    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(os, name, no_chmod, raising=False)
    path = os.path.join(sock_dir, "z.sock")
    listener, created = await open_unix_listener(path, 0o600)
    assert modes_at_bind == [0o600]
    await listener.aclose()
    created.remove()


async def test_owner_is_never_changed_through_a_symlink(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--socket-uid/--socket-gid change the socket itself, never a link's target."""
    calls: list[dict[str, object]] = []

    def recording_chown(path: str, uid: int, gid: int, **kwargs: object) -> None:
        calls.append({"path": path, "uid": uid, "gid": gid, **kwargs})

    monkeypatch.setattr(os, "chown", recording_chown)
    path = os.path.join(sock_dir, "z.sock")
    listener, created = await open_unix_listener(path, 0o660, uid=123, gid=456)
    assert len(calls) == 1
    call = calls[0]
    # Relative to the directory checked and held open, never by its full path again.
    assert call["path"] == "z.sock"
    assert os.path.samestat(os.fstat(call.pop("dir_fd")), os.stat(sock_dir))  # type: ignore[arg-type]
    assert call == {"path": "z.sock", "uid": 123, "gid": 456, "follow_symlinks": False}
    await listener.aclose()
    created.remove()


async def test_directory_others_can_write_is_refused(sock_dir: str) -> None:
    """A world- or group-writable directory on the path stops start-up, naming it."""
    parent = os.path.join(sock_dir, "open")
    os.mkdir(parent)
    for mode in (0o777, 0o775):
        os.chmod(parent, mode)
        with pytest.raises(StartupError, match=f"{parent} is writable by .*{mode:04o}"):
            await open_unix_listener(os.path.join(parent, "deeper", "z.sock"), 0o666)
        assert os.listdir(parent) == []  # nothing created below it either


async def test_sticky_directory_is_trusted(sock_dir: str) -> None:
    """A /tmp-like sticky directory (others may add, never remove or rename) is accepted."""
    parent = os.path.join(sock_dir, "tmp")
    os.mkdir(parent)
    os.chmod(parent, 0o1777)
    listener, created = await open_unix_listener(os.path.join(parent, "z.sock"), 0o666)
    assert describe(listener).startswith("unix:")
    await listener.aclose()
    created.remove()
    created.remove()  # a second call is harmless
    assert os.listdir(parent) == []


async def test_trusted_symlink_on_the_path_is_followed(sock_dir: str) -> None:
    """Like /var/run -> /run: a link we own, in a directory we trust, leads to its target."""
    real = os.path.join(sock_dir, "real")
    os.mkdir(real)
    os.symlink("real", os.path.join(sock_dir, "link"))
    path = os.path.join(sock_dir, "link", "z.sock")
    listener, created = await open_unix_listener(path, 0o666)
    assert os.listdir(real) == ["z.sock"]
    client = await trio.open_unix_socket(path)
    await client.aclose()
    await listener.aclose()
    created.remove()
    assert os.listdir(real) == []


async def test_work_stays_in_the_directory_that_was_checked(sock_dir: str) -> None:
    """Swapping the checked directory for a symlink after it was opened changes nothing:
    the stale check, bind and removal all happen in the directory we hold open."""
    victim = os.path.join(sock_dir, "victim")
    os.mkdir(victim)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.path.join(victim, "z.sock"))
    dead.close()
    checked = os.path.join(sock_dir, "run")
    os.mkdir(checked)
    dir_fd, name = open_socket_dir(os.path.join(checked, "z.sock"))
    os.rename(checked, checked + ".moved")
    os.symlink(victim, checked)
    listener, created = await bind_in(dir_fd, name, os.path.join(checked, "z.sock"), 0o666)
    assert os.listdir(checked + ".moved") == ["z.sock"]
    assert stat.S_ISSOCK(os.lstat(os.path.join(victim, "z.sock")).st_mode)  # untouched
    await listener.aclose()
    created.remove()
    assert os.listdir(checked + ".moved") == []
    assert os.path.exists(os.path.join(victim, "z.sock"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_directory_of_another_user_is_refused(sock_dir: str) -> None:
    """A directory owned by someone else (here uid 65534) is refused, naming the owner."""
    parent = os.path.join(sock_dir, "theirs")
    os.mkdir(parent, 0o755)
    os.chown(parent, 65534, 65534)
    with pytest.raises(StartupError, match=f"{parent} is owned by uid 65534"):
        await open_unix_listener(os.path.join(parent, "z.sock"), 0o666)
