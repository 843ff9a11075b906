"""Helpers for driving the installed ``zeusd`` executable the way a person with socat would.

Nothing here imports the daemon's code: the process is started from the console script next
to the running interpreter, readiness is its ``listening on`` log line, and every reply line
is checked against the wire contract (single-line compact JSON-RPC 2.0) as it is read.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The console script installed into the same environment as this interpreter.
ZEUSD = str(Path(sys.executable).with_name("zeusd"))
SOCAT = shutil.which("socat") or "/usr/bin/socat"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 5.0
NOBODY = 65534

_LISTENING = re.compile(r"listening on (\S+)")


def short_tempdir() -> str:
    """A fresh directory with a short path: AF_UNIX paths must stay under 108 bytes."""
    return tempfile.mkdtemp(prefix="zd-")


# --- checking what the daemon writes ----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_message(message: Any) -> None:
    """Assert *message* is one JSON-RPC 2.0 response object or subscription notification."""
    assert isinstance(message, dict), message
    assert message.get("jsonrpc") == "2.0", message
    if "method" in message:
        assert set(message) == {"jsonrpc", "method", "params"}, message
        assert message["method"] in ("gpu.power", "cpu.power"), message
        return
    assert "id" in message, message
    assert set(message) <= {"jsonrpc", "id", "result", "error"}, message
    assert ("result" in message) != ("error" in message), message
    if "error" in message:
        error = message["error"]
        assert isinstance(error, dict), message
        assert type(error.get("code")) is int, message
        assert isinstance(error.get("message"), str), message
        assert set(error) <= {"code", "message", "data"}, message


def parse_line(line: bytes) -> Any:
    """Parse one reply line (without its ``\\n``), asserting it is compact JSON-RPC 2.0."""
    assert line, "empty reply line"
    assert b"\n" not in line, line
    assert b"\r" not in line, line
    text = line.decode("utf-8")
    message = json.loads(text, parse_constant=_reject_constant)
    compact = {
        json.dumps(message, separators=(",", ":"), ensure_ascii=ascii_only)
        for ascii_only in (True, False)
    }
    assert text in compact, f"not compact single-line JSON: {text[:200]!r}"
    if isinstance(message, list):
        assert message, "an empty array is never a valid reply"
        for member in message:
            check_message(member)
    else:
        check_message(message)
    return message


def parse_output(data: bytes) -> list[Any]:
    """Every reply in *data* (a whole transcript), asserting each ends with ``\\n``."""
    if not data:
        return []
    assert data.endswith(b"\n"), f"last reply is not newline-terminated: {data[-100:]!r}"
    return [parse_line(line) for line in data[:-1].split(b"\n")]


def by_id(replies: Sequence[Any]) -> dict[Any, Any]:
    """Index single replies by id, asserting no id is answered twice."""
    indexed: dict[Any, Any] = {}
    for reply in replies:
        assert isinstance(reply, dict), reply
        assert reply["id"] not in indexed, f"id {reply['id']!r} answered twice"
        indexed[reply["id"]] = reply
    return indexed


def result_of(reply: Any) -> Any:
    assert "error" not in reply, reply
    return reply["result"]


def error_of(reply: Any, code: int) -> Any:
    """The error object of *reply*, asserting its code."""
    assert "error" in reply, reply
    assert reply["error"]["code"] == code, reply
    return reply["error"]


# --- building requests --------------------------------------------------------------------------


def request(method: str, id: Any = None, /, **params: Any) -> dict[str, Any]:
    """A request (or, with id None, a notification) with params given by name."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


def lines(*messages: Any, ending: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(m).encode() + ending for m in messages)


# --- the daemon process -------------------------------------------------------------------------


class DaemonProcess:
    """A running ``zeusd``; its stderr is collected by a thread so the pipe never fills."""

    def __init__(
        self,
        args: Sequence[str],
        socket_path: str | None,
        prefix: Sequence[str] = (),
        *,
        program: Sequence[str] = (ZEUSD,),
    ) -> None:
        self.args = [*prefix, *program, *with_state_dir(args)]
        self.socket_path = socket_path
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._log: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.address = ""

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self._log.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self._log)

    def wait_for_log(self, pattern: str, timeout: float = READY_TIMEOUT_S) -> re.Match[str]:
        """Block until a stderr line matches *pattern* (a regex); fail on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._log[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._log)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._changed.wait(left)
        why = "exited" if self._eof else f"no match within {timeout} s"
        raise AssertionError(f"zeusd {why} waiting for {pattern!r}; stderr:\n{self.log}")

    def wait_ready(self) -> None:
        self.address = self.wait_for_log(_LISTENING.pattern).group(1)

    @property
    def tcp_port(self) -> int:
        match = re.fullmatch(r"tcp:127\.0\.0\.1:(\d+)", self.address)
        assert match, f"unexpected TCP address in log: {self.address!r}"
        return int(match.group(1))

    @property
    def socat_address(self) -> str:
        if self.address.startswith("unix:"):
            return f"UNIX-CONNECT:{self.address.removeprefix('unix:')}"
        return f"TCP:127.0.0.1:{self.tcp_port}"

    def connect(self, timeout: float = IO_TIMEOUT_S) -> LineConnection:
        if self.address.startswith("unix:"):
            return LineConnection.unix(self.address.removeprefix("unix:"), timeout)
        return LineConnection.tcp(self.tcp_port, timeout)

    def exchange(self, data: bytes) -> list[Any]:
        """Pipe *data* into socat connected to this daemon; return the parsed replies."""
        return socat_exchange(self.socat_address, data)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon, wait for it (killing it if it hangs) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(STOP_TIMEOUT_S)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode


def start_daemon(
    *args: str,
    socket_path: str | None = None,
    sim_gpus: int | None = None,
    prefix: Sequence[str] = (),
) -> DaemonProcess:
    """Start ``zeusd --gpu-backend sim`` and wait for its ``listening on`` line.

    With *socket_path* it listens there (``--socket-path``); the caller owns the directory.
    *prefix* runs it through another program (``prlimit --nofile=64 --``).
    """
    argv = ["--gpu-backend", "sim", *args]
    if not any(arg.startswith("--rapl-root") for arg in args):
        # The host's own RAPL tree must not change what the tests see.
        argv.append("--rapl-root=/nonexistent/zeusd-test-powercap")
    if socket_path is not None:
        argv += ["--socket-path", socket_path]
    if sim_gpus is not None:
        argv += ["--sim-gpus", str(sim_gpus)]
    daemon = DaemonProcess(argv, socket_path, prefix)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.stop(signal.SIGKILL)
        raise
    return daemon


@contextmanager
def running_daemon(*args: str, **kwargs: Any) -> Iterator[DaemonProcess]:
    daemon = start_daemon(*args, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()


def with_state_dir(args: Sequence[str]) -> list[str]:
    """*args*, plus a fresh ``--state-dir`` unless they name one or are ``token ...``.

    The default (/run/zeusd) is one directory per node, locked by the daemon using it: tests
    running side by side, as root in CI, must each have their own.
    """
    if list(args[:1]) == ["token"] or any(a.split("=")[0] == "--state-dir" for a in args):
        return list(args)
    return [*args, "--state-dir", os.path.join(_state_parent(), f"s{next(_state_ids)}")]


_state_ids = itertools.count()


@functools.cache
def _state_parent() -> str:
    # One sticky, world-writable parent per test run (like /tmp), so that a daemon started
    # as another user can create its state dir there too; removed when the run ends.
    parent = tempfile.mkdtemp(prefix="zd-state-")
    os.chmod(parent, 0o1777)
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    return parent


def run_zeusd(*args: str, timeout: float = 20.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``zeusd`` to completion (for runs that are expected to exit by themselves)."""
    return subprocess.run(
        [ZEUSD, *with_state_dir(args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def write_token_key(directory: str) -> str:
    """A fresh ``--token-key`` file in *directory* (mode 0600, as the daemon requires)."""
    path = os.path.join(directory, "key")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, 0o600)
    return path


def issue_token(key: str, scopes: str, subject: str = "alice") -> str:
    """A token for *subject* with *scopes* (comma list), from ``zeusd token issue``."""
    argv = ["token", "issue", "--token-key", key, "--subject", subject, "--scopes", scopes]
    done = subprocess.run(
        [ZEUSD, *argv, "--expires", "1h"], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def write_sim_config(directory: str, text: str) -> str:
    path = os.path.join(directory, "sim.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# --- clients ------------------------------------------------------------------------------------


def socat_exchange(address: str, data: bytes, wait_s: float = 2.0) -> list[Any]:
    """``socat -t WAIT - ADDRESS`` with *data* on stdin: send, half-close, read all replies.

    socat exits when the daemon closes its side (after answering everything it read), or
    *wait_s* after stdin's EOF at the latest.
    """
    done = subprocess.run(
        [SOCAT, "-t", str(wait_s), "-", address],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return parse_output(done.stdout)


class LineConnection:
    """A persistent stdlib socket: raw bytes out, checked reply lines in."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self._reader = sock.makefile("rb")
        self._next_id = 0

    @classmethod
    def unix(cls, path: str, timeout: float = IO_TIMEOUT_S) -> LineConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    @classmethod
    def tcp(cls, port: int, timeout: float = IO_TIMEOUT_S) -> LineConnection:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout), timeout)

    def __enter__(self) -> LineConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *messages: Any) -> None:
        self.send_raw(lines(*messages))

    def read_line(self) -> bytes:
        """One raw reply line without its ``\\n``; b"" at EOF. Times out (fails) if none."""
        raw = self._reader.readline()
        if raw:
            assert raw.endswith(b"\n"), f"reply cut off without newline: {raw[-100:]!r}"
            return raw[:-1]
        return b""

    def read(self) -> Any:
        line = self.read_line()
        assert line, "the daemon closed the connection instead of replying"
        return parse_line(line)

    def call(self, method: str, /, **params: Any) -> Any:
        """Send one request, return its whole reply (asserting it carries our id)."""
        self._next_id += 1
        req_id = f"c{self._next_id}"
        self.send(request(method, req_id, **params))
        reply = self.read()
        assert isinstance(reply, dict), reply
        assert reply["id"] == req_id, reply
        return reply

    def result(self, method: str, /, **params: Any) -> Any:
        return result_of(self.call(method, **params))


# --- running a child without root ---------------------------------------------------------------


def run_zeusd_unprivileged(*args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``zeusd ARGS`` with an effective uid other than 0; return it and how that was done.

    Not root: run it as ourselves. Root: as uid/gid 65534 via subprocess's ``user=``; if the
    interpreter is not reachable by that user (e.g. it lives under a 0700 /root), in a new
    user namespace (``unshare --user``, where our uid is unmapped and reads as 65534); if
    that is forbidden too, by importing the CLI as root and dropping to 65534 before main().
    """
    if os.geteuid() != 0:
        return run_zeusd(*args, cwd="/"), "as the current non-root user"
    try:
        done = run_zeusd(
            *args, cwd="/", user=NOBODY, group=NOBODY, extra_groups=[], env=_plain_env()
        )
    except PermissionError:
        pass
    else:
        return done, "as uid 65534 via subprocess user="
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run(
            [unshare, "--user", sys.executable, "-c", "import os; print(os.geteuid())"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(NOBODY):
            done = subprocess.run(
                [unshare, "--user", ZEUSD, *with_state_dir(args)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
                cwd="/",
            )
            return done, "in a user namespace (unshare --user), euid 65534"
    code = (
        "import os, sys\n"
        "from zeusd.cli import main\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *with_state_dir(args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd="/",
    )
    return done, "zeusd.cli.main() after dropping to uid 65534 in-process"


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    env["HOME"] = "/"
    return env
