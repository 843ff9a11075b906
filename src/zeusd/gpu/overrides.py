"""Site commands that carry out gpu-control methods (``--gpu-command-overrides FILE``).

For nodes where the daemon never gets root: each gpu-control method may be done by a list
of commands (typically sudoers-whitelisted scripts) instead of the vendor library. The
commands run without a shell, in order, each within its ``timeout_s``; the first failure
(non-zero exit, a signal, the timeout, or output matching ``error_pattern``) stops the list
and fails that GPU with the exit status and the output's tail.

:class:`OverriddenDevice` wraps a backend's device: overridden writes run commands, the
rest (all reads) go to the library. It runs inside the GPU's lane job like any other
device call, so the lanes' per-GPU ordering and the restore ledger apply unchanged; a
command that hangs holds its own GPU's lane (until its timeout) and nothing else.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import stat
import string
import subprocess
import tempfile
import tomllib
import types
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from zeusd.gpu.backend import GpuInfo, NvmlCallError, reset_both_clocks
from zeusd.gpu.device import GpuBackend, GpuDevice

DEFAULT_TIMEOUT_S = 60.0
#: How much of a command's output error_pattern is matched against (its end).
SCAN_BYTES = 64 * 1024
#: How much of it an error message quotes (its end).
TAIL_CHARS = 400

_CLOCKS = ("gpu_id", "min_clock_mhz", "max_clock_mhz")
#: Method (without ``gpu.``) -> the placeholders its commands may use.
PLACEHOLDERS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "set_power_limit": ("gpu_id", "power_limit_mw", "power_limit_w"),
        "reset_power_limit": ("gpu_id",),
        "set_persistence_mode": ("gpu_id", "enabled"),
        "set_gpu_locked_clocks": _CLOCKS,
        "reset_gpu_locked_clocks": ("gpu_id",),
        "set_mem_locked_clocks": _CLOCKS,
        "reset_mem_locked_clocks": ("gpu_id",),
        "reset_locked_clocks": ("gpu_id",),
    }
)
_KEYS = ("commands", "timeout_s", "error_pattern")


class OverridesError(Exception):
    """The overrides file is unsafe, unreadable or invalid; the message says why."""


class CommandFailedError(NvmlCallError):
    """An override command failed; the client also sees its exit status and output tail."""

    def __init__(
        self, nvml_error: str, message: str, exit_status: int | None, output_tail: str
    ) -> None:
        super().__init__(nvml_error, message)
        self.exit_status = exit_status
        self.output_tail = output_tail

    def detail(self) -> dict[str, Any]:
        extra = {"exit_status": self.exit_status, "output_tail": self.output_tail}
        return {**super().detail(), **extra}


@attrs.frozen
class Override:
    """The commands that carry out one method."""

    method: str
    commands: tuple[tuple[str, ...], ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    error_pattern: re.Pattern[str] | None = None

    def run(self, values: Mapping[str, str]) -> None:
        """Run every command with *values* filled in; raise CommandFailedError at the first
        that fails. Blocks (at most timeout_s per command)."""
        for number, template in enumerate(self.commands, 1):
            argv = [arg.format_map(values) for arg in template]
            where = f"{self.method} command {number} of {len(self.commands)} ({argv[0]})"
            status, output = _run(argv, self.timeout_s, where)
            tail = output[-TAIL_CHARS:]
            if status is None:
                raise CommandFailedError(
                    "NVML_ERROR_TIMEOUT",
                    f"{where} did not finish within {self.timeout_s:g} s and was killed; "
                    f"output: {tail!r}",
                    None,
                    tail,
                )
            if status != 0:
                how = f"was killed by signal {-status}" if status < 0 else f"exited {status}"
                raise CommandFailedError(
                    "NVML_ERROR_UNKNOWN", f"{where} {how}; output: {tail!r}", status, tail
                )
            if self.error_pattern is not None and self.error_pattern.search(output):
                raise CommandFailedError(
                    "NVML_ERROR_UNKNOWN",
                    f"{where} exited 0 but its output matches error_pattern "
                    f"{self.error_pattern.pattern!r}; output: {tail!r}",
                    status,
                    tail,
                )


def _run(argv: Sequence[str], timeout_s: float, where: str) -> tuple[int | None, str]:
    """Run *argv* without a shell; return its exit status (None: timed out) and output."""
    # Output goes to a file, not a pipe: a grandchild that keeps the descriptor open can
    # then never make us wait past the timeout, and a chatty command costs no memory.
    with tempfile.TemporaryFile() as out:
        try:
            # A session of its own: on timeout the whole process group is killed.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise CommandFailedError(
                "NVML_ERROR_UNKNOWN", f"{where} could not be started: {exc}", None, ""
            ) from exc
        try:
            status: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            status = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - SCAN_BYTES))
        return status, out.read().decode("utf-8", errors="replace")


def _watts(milliwatts: int) -> str:
    whole, rest = divmod(milliwatts, 1000)
    return str(whole) if rest == 0 else f"{whole}.{rest:03d}".rstrip("0")


class OverriddenDevice:
    """A device whose overridden gpu-control methods run site commands."""

    def __init__(self, inner: GpuDevice, overrides: Mapping[str, Override]) -> None:
        self._inner = inner
        self._overrides = overrides
        # Commands cannot be asked what they locked: the locks set through this object.
        self._gpu_locked: tuple[int, int] | None = None
        self._mem_locked: tuple[int, int] | None = None

    @property
    def index(self) -> int:
        return self._inner.index

    def _run(self, method: str, **values: object) -> bool:
        override = self._overrides.get(method)
        if override is None:
            return False
        override.run({"gpu_id": str(self.index), **{k: str(v) for k, v in values.items()}})
        return True

    # -- writes --------------------------------------------------------------------------

    def set_power_limit(self, milliwatts: int) -> None:
        watts = _watts(milliwatts)
        if not self._run("set_power_limit", power_limit_mw=milliwatts, power_limit_w=watts):
            self._inner.set_power_limit(milliwatts)

    def reset_power_limit(self) -> None:
        if self._run("reset_power_limit"):
            return
        if "set_power_limit" in self._overrides:
            # Resetting is setting the default: through the site's command too.
            self.set_power_limit(self._inner.get_default_power_limit())
        else:
            self._inner.reset_power_limit()

    def set_persistence_mode(self, enabled: bool) -> None:
        if not self._run("set_persistence_mode", enabled=int(enabled)):
            self._inner.set_persistence_mode(enabled)

    def set_gpu_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        if not self._run("set_gpu_locked_clocks", min_clock_mhz=min_mhz, max_clock_mhz=max_mhz):
            self._inner.set_gpu_locked_clocks(min_mhz, max_mhz)
        self._gpu_locked = (min_mhz, max_mhz)

    def reset_gpu_locked_clocks(self) -> None:
        if not self._run("reset_gpu_locked_clocks"):
            self._inner.reset_gpu_locked_clocks()
        self._gpu_locked = None

    def set_mem_locked_clocks(self, min_mhz: int, max_mhz: int) -> None:
        if not self._run("set_mem_locked_clocks", min_clock_mhz=min_mhz, max_clock_mhz=max_mhz):
            self._inner.set_mem_locked_clocks(min_mhz, max_mhz)
        self._mem_locked = (min_mhz, max_mhz)

    def reset_mem_locked_clocks(self) -> None:
        if not self._run("reset_mem_locked_clocks"):
            self._inner.reset_mem_locked_clocks()
        self._mem_locked = None

    def reset_locked_clocks(self) -> None:
        if not self._run("reset_locked_clocks"):
            reset_both_clocks(self.reset_gpu_locked_clocks, self.reset_mem_locked_clocks)
        self._gpu_locked = self._mem_locked = None

    def get_locked_clocks(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(graphics, memory) locks set through this daemon and not reset since."""
        return self._gpu_locked, self._mem_locked

    # -- reads: always the library -------------------------------------------------------

    def get_power_limit(self) -> int:
        return self._inner.get_power_limit()

    def get_power_limit_constraints(self) -> tuple[int, int]:
        return self._inner.get_power_limit_constraints()

    def get_default_power_limit(self) -> int:
        return self._inner.get_default_power_limit()

    def get_persistence_mode(self) -> bool:
        return self._inner.get_persistence_mode()

    def get_power(self) -> int:
        return self._inner.get_power()

    def get_cumulative_energy(self) -> int:
        return self._inner.get_cumulative_energy()

    def get_supported_memory_clocks(self) -> list[int]:
        return self._inner.get_supported_memory_clocks()

    def get_supported_graphics_clocks(self, memory_clock_mhz: int) -> list[int]:
        return self._inner.get_supported_graphics_clocks(memory_clock_mhz)


@attrs.define
class OverriddenBackend:
    """A backend whose devices carry out the overridden methods with site commands."""

    inner: GpuBackend
    overrides: Mapping[str, Override]
    devices: Sequence[OverriddenDevice] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.devices = [OverriddenDevice(d, self.overrides) for d in self.inner.devices]

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def infos(self) -> Sequence[GpuInfo]:
        return self.inner.infos

    def close(self) -> None:
        self.inner.close()


# --- the file ---------------------------------------------------------------------------


def load_overrides(path: str, euid: int | None = None) -> dict[str, Override]:
    """Read, check and parse the overrides file at *path*. Raises OverridesError.

    The file decides what runs as the daemon's user, so it must be a regular file owned by
    root or by the daemon's user (*euid*), and writable by nobody else.
    """
    euid = os.geteuid() if euid is None else euid
    where = f"--gpu-command-overrides {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise OverridesError(f"{where}: cannot open: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OverridesError(f"{where}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_uid not in (0, euid):
            raise OverridesError(
                f"{where}: owned by uid {info.st_uid}; it must be owned by root or by the "
                f"daemon's user (uid {euid}), since it says what the daemon runs"
            )
        if info.st_mode & 0o022:
            raise OverridesError(
                f"{where}: writable by group or others (mode {stat.S_IMODE(info.st_mode):03o}); "
                f"anyone who can write it can run commands as the daemon: chmod go-w {path}"
            )
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OverridesError(f"{where}: not valid UTF-8: {exc}") from exc
    return parse_overrides(text, where)


def parse_overrides(text: str, where: str = "overrides") -> dict[str, Override]:
    """Validate TOML *text*; *where* names it in error messages. Raises OverridesError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OverridesError(f"{where}: TOML syntax error: {exc}") from exc
    if not doc:
        raise OverridesError(
            f"{where}: no method tables; add e.g. [set_power_limit] with commands = [[...]]"
        )
    overrides: dict[str, Override] = {}
    for method, table in doc.items():
        if method not in PLACEHOLDERS:
            raise OverridesError(
                f"{where}: unknown method [{method}] (gpu-control methods, without 'gpu.': "
                f"{', '.join(PLACEHOLDERS)})"
            )
        if not isinstance(table, dict):
            raise OverridesError(f"{where}: {method!r} must be a table, written [{method}]")
        overrides[method] = _parse_table(method, table, f"{where}, [{method}]")
    return overrides


def _parse_table(method: str, table: dict[str, Any], where: str) -> Override:
    for key in table:
        if key not in _KEYS:
            raise OverridesError(f"{where}: unknown key {key!r} (allowed: {', '.join(_KEYS)})")
    if "commands" not in table:
        raise OverridesError(f"{where}: 'commands' is missing")
    commands = table["commands"]
    if (
        not isinstance(commands, list)
        or not commands
        or not all(isinstance(c, list) and c for c in commands)
        or not all(isinstance(a, str) for c in commands for a in c)
    ):
        raise OverridesError(
            f"{where}: 'commands' must be a non-empty list of commands, each a non-empty "
            'list of strings: commands = [["/usr/bin/sudo", "/opt/site/set.sh", "{gpu_id}"]]'
        )
    for number, command in enumerate(commands, 1):
        _check_command(command, PLACEHOLDERS[method], f"{where}, command {number}")
    timeout = table.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise OverridesError(
            f"{where}: 'timeout_s' must be a positive number of seconds (got {timeout!r})"
        )
    pattern: re.Pattern[str] | None = None
    if "error_pattern" in table:
        source = table["error_pattern"]
        if not isinstance(source, str) or not source:
            raise OverridesError(f"{where}: 'error_pattern' must be a non-empty regex string")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise OverridesError(f"{where}: 'error_pattern' is not a valid regex: {exc}") from exc
    return Override(method, tuple(tuple(c) for c in commands), float(timeout), pattern)


def _check_command(command: list[str], allowed: tuple[str, ...], where: str) -> None:
    for arg in command:
        try:
            fields = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise OverridesError(f"{where}: bad placeholder in {arg!r}: {exc}") from exc
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in allowed or spec or conversion:
                raise OverridesError(
                    f"{where}: unknown placeholder {{{name}}} in {arg!r} "
                    f"(this method has: {', '.join('{' + a + '}' for a in allowed)}; "
                    "write {{ and }} for literal braces)"
                )
    program = command[0]
    if "{" in program:
        raise OverridesError(f"{where}: the program ({program!r}) cannot be a placeholder")
    if os.sep in program:
        if not os.path.isabs(program):
            raise OverridesError(f"{where}: give the program as an absolute path or a bare name")
        found: str | None = program if os.access(program, os.X_OK) else None
    else:
        found = shutil.which(program)
    if found is None or not os.path.isfile(found):
        raise OverridesError(f"{where}: program {program!r} not found or not executable")
