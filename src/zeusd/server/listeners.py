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


#: Symlinks followed at most while resolving the socket's directory (as the kernel does).
_MAX_LINKS = 40


@attrs.define(eq=False)
class UnixSocketFile:
    """Identifies the socket file we created, so we never remove someone else's.

    It holds the directory open: removing works on that directory, wherever its path
    leads by then.
    """

    path: str
    dir_fd: int
    name: str
    device: int
    inode: int

    def remove(self) -> None:
        """Unlink our socket if it is still ours; close the directory. Safe to call twice."""
        if self.dir_fd < 0:
            return
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (self.device, self.inode):
                os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.dir_fd)
            self.dir_fd = -1


def _trust_problem(
    st: os.stat_result, shown: str, what: str = "directory", purpose: str = "socket path"
) -> str | None:
    """Why a directory (or symlink) on the socket's path is not safe to trust, or None.

    Whoever may replace an entry of a directory on the way can redirect the daemon, which
    runs as root, to remove or create files elsewhere. Trusted: owned by root or by the
    daemon's own user, and writable by nobody else; except sticky directories (``/tmp``):
    there others may add entries but never remove or rename ours, and every entry we go
    through is checked in turn (theirs are refused), so nothing we rely on can be swapped.
    """
    if st.st_uid not in (0, os.geteuid()):
        return (
            f"{what} {shown} is owned by uid {st.st_uid}, who could swap what the {purpose} "
            "leads to; use a directory owned by root"
        )
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        who = (
            "group and others"
            if st.st_mode & 0o022 == 0o022
            else ("its group" if st.st_mode & 0o020 else "others")
        )
        return (
            f"{what} {shown} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}), "
            f"who could swap what the {purpose} leads to; remove that write permission "
            "or choose another directory"
        )
    return None


def _open_checked(name: str, dir_fd: int | None, shown: str, purpose: str = "socket path") -> int:
    """Open directory *name* (relative to *dir_fd*) without following a symlink, and check
    the directory actually opened."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise StartupError(f"cannot open directory {shown}: {exc.strerror}") from exc
    problem = _trust_problem(os.fstat(fd), shown, purpose=purpose)
    if problem is not None:
        os.close(fd)
        raise StartupError(f"refusing {purpose}: {problem}")
    return fd


def open_socket_dir(path: str, purpose: str = "socket path") -> tuple[int, str]:
    """Open the directory that is to hold socket *path*; return (its fd, the socket's name).

    The path is resolved one component at a time from ``/``, each directory opened with
    ``O_NOFOLLOW`` relative to the one before and checked on the open file (see
    :func:`_trust_problem`); a symlink is followed only if it and its directory are
    trusted, and its target is checked the same way. Missing directories are created
    ``0755`` on the way. Everything done later happens relative to the returned fd, so
    renaming or swapping anything on the path afterwards changes nothing for us.
    Raises StartupError.
    """
    absolute = os.path.normpath(os.path.abspath(path))
    parent, name = os.path.split(absolute)
    if not name or name in (".", ".."):
        raise StartupError(f"socket path {path} names no file")
    pending = [c for c in reversed(parent.split("/")) if c]
    walk = _Walk(path, purpose)
    try:
        while pending:
            walk.step(pending.pop(), pending)
    except BaseException:
        os.close(walk.fd)
        raise
    return walk.fd, name


class _Walk:
    """Where open_socket_dir's resolution stands: the checked directory held open."""

    def __init__(self, path: str, purpose: str = "socket path") -> None:
        self.path = path
        self.purpose = purpose
        self.fd = _open_checked("/", None, "/", purpose)
        self.shown = "/"
        self.links = 0

    def _move(self, fd: int, shown: str) -> None:
        os.close(self.fd)
        self.fd, self.shown = fd, shown

    def step(self, part: str, pending: list[str]) -> None:
        """Go through component *part*; a symlink's target components go onto *pending*."""
        if part == ".":
            return
        if part == "..":
            up = os.path.dirname(self.shown)
            self._move(_open_checked("..", self.fd, up, self.purpose), up)
            return
        here = os.path.join(self.shown, part)
        try:
            st = os.stat(part, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            try:
                os.mkdir(part, 0o755, dir_fd=self.fd)
                log.info("created directory %s for the %s", here, self.purpose)
            except FileExistsError:
                pass  # someone was quicker: whatever it is gets checked below
            except OSError as exc:
                raise StartupError(f"cannot create {here}: {exc.strerror}") from exc
            st = os.stat(part, dir_fd=self.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            self.links += 1
            problem = _trust_problem(st, here, "symlink", self.purpose)
            if problem is not None:
                raise StartupError(f"refusing {self.purpose}: {problem}")
            if self.links > _MAX_LINKS:
                raise StartupError(f"too many symlinks resolving {self.path}")
            target = os.readlink(part, dir_fd=self.fd)
            pending.extend(c for c in reversed(target.split("/")) if c)
            if target.startswith("/"):
                self._move(_open_checked("/", None, "/", self.purpose), "/")
            return
        if not stat.S_ISDIR(st.st_mode):
            raise StartupError(f"{here} is not a directory")
        self._move(_open_checked(part, self.fd, here, self.purpose), here)


def _in_dir(dir_fd: int, name: str) -> str:
    """A path naming *name* inside the directory *dir_fd*, for calls that take no dir_fd
    (``bind``, ``connect``). ``/proc/self/fd/N`` leads to the directory we hold open, not
    to whatever its old path names now, and needs no chdir (which is process-wide)."""
    address = f"/proc/self/fd/{dir_fd}/{name}"
    if len(address.encode()) > 107:
        raise StartupError(f"socket file name {name!r} is too long for a Unix socket")
    return address


def _check_stale(dir_fd: int, name: str, path: str) -> None:
    """Remove a leftover socket nobody answers on; refuse anything else at *path*."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to touch it")
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(_in_dir(dir_fd, name))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s (nothing answers on it)", path)
        os.unlink(name, dir_fd=dir_fd)  # a socket file left by a daemon that died
        return
    except OSError as exc:
        raise StartupError(f"cannot check whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    raise StartupError(f"{path} is in use: another daemon answered on it; not starting")


async def open_unix_listener(
    path: str, mode: int, uid: int | None = None, gid: int | None = None
) -> tuple[trio.SocketListener, UnixSocketFile]:
    """Bind *path* with permissions *mode* (and owner, if given) and listen on it.

    Refuses a path whose directories others could swap (see :func:`open_socket_dir`).
    """
    dir_fd, name = open_socket_dir(path)
    try:
        return await bind_in(dir_fd, name, path, mode, uid, gid)
    except BaseException:
        os.close(dir_fd)
        raise


async def bind_in(
    dir_fd: int, name: str, path: str, mode: int, uid: int | None = None, gid: int | None = None
) -> tuple[trio.SocketListener, UnixSocketFile]:
    """Bind socket *name* in the directory *dir_fd* (shown as *path*) and listen on it; the
    returned file takes over *dir_fd*."""
    _check_stale(dir_fd, name, path)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    # bind() creates the file with 0o777 & ~umask: setting the umask first means the file
    # is never, even briefly, more open than asked. Start-up is single-threaded.
    old_umask = os.umask(0o777 & ~mode)
    try:
        await sock.bind(_in_dir(dir_fd, name))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    created = UnixSocketFile(path, dir_fd, name, st.st_dev, st.st_ino)
    try:
        if uid is not None or gid is not None:
            # follow_symlinks=False: never change the owner of whatever a link points at.
            os.chown(
                name,
                -1 if uid is None else uid,
                -1 if gid is None else gid,
                dir_fd=dir_fd,
                follow_symlinks=False,
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
