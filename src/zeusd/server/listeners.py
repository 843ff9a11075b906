"""Opening the Unix or TCP listening socket, with the checks an admin expects at start-up."""

from __future__ import annotations

import errno
import logging
import os
import socket as stdlib_socket
import stat

import attrs
import trio

log = logging.getLogger(__name__)

BACKLOG = 128


class StartupError(Exception):
    """The daemon cannot start; the message says why and is shown to the admin as is."""


@attrs.frozen
class UnixSocketFile:
    """Identifies the socket file we created, so we never remove someone else's."""

    path: str
    device: int
    inode: int

    def remove(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == (self.device, self.inode):
            os.unlink(self.path)


def _check_stale(path: str) -> None:
    """Remove a leftover socket nobody answers on; refuse anything else at *path*."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to touch it")
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s (nothing answers on it)", path)
        os.unlink(path)  # a socket file left by a daemon that died
        return
    except OSError as exc:
        raise StartupError(f"cannot check whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    raise StartupError(f"{path} is in use: another daemon answered on it; not starting")


async def open_unix_listener(
    path: str, mode: int, uid: int | None = None, gid: int | None = None
) -> tuple[trio.SocketListener, UnixSocketFile]:
    """Bind *path* with permissions *mode* (and owner, if given) and listen on it."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create {parent}: {exc.strerror}") from exc
    _check_stale(path)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    # bind() creates the file with 0o777 & ~umask: setting the umask first means the file
    # is never, even briefly, more open than asked. Start-up is single-threaded.
    old_umask = os.umask(0o777 & ~mode)
    try:
        await sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    st = os.lstat(path)
    created = UnixSocketFile(path, st.st_dev, st.st_ino)
    try:
        if uid is not None or gid is not None:
            # follow_symlinks=False: never change the owner of whatever a link points at.
            os.chown(
                path, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=False
            )
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        created.remove()
        raise StartupError(f"cannot set up {path}: {exc.strerror}") from exc
    return trio.SocketListener(sock), created


def parse_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:4938`` or ``[::1]:4938`` -> (host, port). Raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (got {text!r})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535 (got {port_text!r})")
    return host, int(port_text)


async def open_tcp_listener(host: str, port: int) -> trio.SocketListener:
    try:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another daemon running?)"
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from exc
    for extra in listeners[1:]:  # a host name can resolve to several addresses
        await extra.aclose()
    return listeners[0]


#: The first file descriptor systemd passes (sd_listen_fds(3)).
LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def inherited_listener() -> trio.SocketListener | None:
    """The listening socket systemd passed us (socket activation), or None if there is none.

    Follows sd_listen_fds(3): the socket is fd 3 when ``LISTEN_PID`` is our pid. The
    variables are removed so that no child process takes the socket for its own.
    """
    count = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    if count is None or pid is None or pid != str(os.getpid()):
        return None  # nothing passed, or passed to another process (our parent)
    for name in _LISTEN_VARS:
        os.environ.pop(name, None)
    if count != "1":
        raise StartupError(
            f"systemd passed LISTEN_FDS={count} sockets; zeusd serves exactly one "
            "(give the .socket unit a single ListenStream=)"
        )
    try:
        os.set_inheritable(LISTEN_FDS_START, False)
        sock = stdlib_socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise StartupError(f"LISTEN_FDS=1 but fd 3 is not a socket: {exc.strerror}") from exc
    listening = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN)
    if sock.type != stdlib_socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close
        raise StartupError("the socket systemd passed is not a listening stream socket")
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def transport_of(listener: trio.SocketListener) -> str:
    """``uds`` or ``tcp``, as sessions report it."""
    return "uds" if listener.socket.family == stdlib_socket.AF_UNIX else "tcp"


def describe(listener: trio.SocketListener) -> str:
    """The address clients connect to, for the ``listening on`` log line."""
    sock = listener.socket
    if sock.family == stdlib_socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"
