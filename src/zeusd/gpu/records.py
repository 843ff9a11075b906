"""Restore records in ``--state-dir``: what a restart must do about each changed GPU setting.

One file per (GPU, setting), named ``gpu<N>.<setting>.json``, says what a daemon starting
after a crash must do with that setting: put it back to a value (``restore``) or leave it
(its writer wanted it to stay). Files are replaced atomically: written to a temporary file,
fsynced, renamed over the old one, and the directory fsynced. The directory is locked
(``flock`` on ``lock``) for the daemon's lifetime, so two daemons never share one.

A file named like a record that does not parse is logged and moved into ``set-aside/`` when
the daemon starts; it never stops the daemon. Anything else in the directory is not zeusd's
(the directory may be shared by mistake, or hold the daemon's own socket): it is named in one
warning and left where it is, since a root daemon must not move files it did not write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator

import attrs

log = logging.getLogger(__name__)

FORMAT = "zeusd-restore-record/1"
LOCK_NAME = "lock"
ASIDE_DIR = "set-aside"
SETTING_NAMES = ("power_limit", "persistence_mode", "gpu_locked_clocks", "mem_locked_clocks")
_RECORD_NAME = re.compile(r"gpu(0|[1-9][0-9]{0,4})\.([a-z_]+)\.json")
_TEMP_PREFIX = ".tmp."
#: How many foreign entries the start-up warning names.
_FOREIGN_SHOWN = 5
#: Records are tiny; anything bigger is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class StateDirError(Exception):
    """The state directory cannot be used; the message says why (shown to the admin)."""


def boot_id() -> str:
    """This boot's id: a record from another boot describes GPUs that were reset since."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


@attrs.frozen(kw_only=True)
class Record:
    gpu: int
    uuid: str
    setting: str
    #: True: put the setting back to *before*; False: leave it as it is.
    restore: bool
    #: The value to put back; None where it could not be read (locked clocks: always).
    before: int | bool | None
    #: Who made the change this record is about (a session's description).
    changed_by: str
    #: Why it must be restored or kept, in words for the log.
    reason: str
    boot_id: str = ""

    @property
    def name(self) -> str:
        return record_name(self.gpu, self.setting)

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **attrs.asdict(self)}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def record_name(gpu: int, setting: str) -> str:
    return f"gpu{gpu}.{setting}.json"


class BadRecord(Exception):
    """A file that is not a valid record; the message says what is wrong with it."""


def parse_record(name: str, data: bytes) -> Record:
    """The record in *data* (file *name*). Raises BadRecord."""
    match = _RECORD_NAME.fullmatch(name)
    if not match or match.group(2) not in SETTING_NAMES:
        raise BadRecord("not a record name")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord(f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadRecord(f"not a {FORMAT} object")
    fields = {f.name: f for f in attrs.fields(Record)}
    if set(body) != {"format", *fields}:
        raise BadRecord("unexpected or missing fields")
    gpu, setting, before = body["gpu"], body["setting"], body["before"]
    if type(gpu) is not int or (gpu, setting) != (int(match.group(1)), match.group(2)):
        raise BadRecord("its gpu and setting do not match its name")
    for key in ("uuid", "changed_by", "reason", "boot_id"):
        if not isinstance(body[key], str):
            raise BadRecord(f"{key} is not a string")
    if type(body["restore"]) is not bool:
        raise BadRecord("restore is not a boolean")
    wanted = {"power_limit": int, "persistence_mode": bool}.get(setting)
    if before is not None and (wanted is None or type(before) is not wanted):
        raise BadRecord(f"before has the wrong type for {setting}")
    if type(before) is int and not 0 <= before < 2**32:
        raise BadRecord("before is out of range")
    del body["format"]
    return Record(**body)


class RecordStore:
    """The open, locked state directory. Writes happen in lane threads; never on trio."""

    def __init__(self, path: str, fd: int, lock_fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path: str, parent_fd: int | None = None) -> RecordStore:
        """Create (0700) or check *path*, and lock it. Raises StateDirError.

        With *parent_fd* (the directory that holds *path*, opened and checked by the
        caller), everything happens relative to it, so nothing on the way can be swapped.
        """
        path = os.path.abspath(path)
        name = os.path.basename(path) if parent_fd is not None else path
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateDirError(
                f"--state-dir {path}: cannot create it: {exc.strerror}; "
                "pass --state-dir with a directory this user may create"
            ) from None
        try:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise StateDirError(f"--state-dir {path}: cannot open it: {why}") from None
        try:
            _check_private(path, os.fstat(fd))
            lock_fd = os.open(
                LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
            )
        except BaseException:
            os.close(fd)
            raise
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            os.close(fd)
            raise StateDirError(
                f"--state-dir {path} is in use by another zeusd; give each daemon its own"
            ) from None
        return cls(path, fd, lock_fd)

    def close(self) -> None:
        os.close(self._lock_fd)  # releases the lock
        os.close(self._fd)

    # -- writes (lane threads) -----------------------------------------------------------

    def put(self, record: Record) -> None:
        """Durably replace *record*'s file. Raises OSError."""
        temp = f"{_TEMP_PREFIX}{record.name}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=self._fd)
        try:
            os.write(fd, record.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, record.name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        os.fsync(self._fd)

    def remove(self, gpu: int, setting: str) -> None:
        """Durably remove the record of (*gpu*, *setting*), if there is one."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record_name(gpu, setting), dir_fd=self._fd)
            os.fsync(self._fd)

    # -- at start-up (before any lane runs) ----------------------------------------------

    def load(self) -> list[Record]:
        """Every record left in the directory; everything else is logged and set aside."""
        records = []
        foreign = []
        for name in sorted(os.listdir(self._fd)):
            if name in (LOCK_NAME, ASIDE_DIR):
                continue
            if not (_RECORD_NAME.fullmatch(name) or name.startswith(_TEMP_PREFIX)):
                foreign.append(name)
                continue
            if name.startswith(_TEMP_PREFIX):
                # A write that never reached its rename: the record it would have replaced
                # (if any) is still in place and still right.
                log.info("state dir: removing %s, an unfinished write", name)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._fd)
                continue
            try:
                records.append(parse_record(name, self._read(name)))
            except BadRecord as exc:
                self.set_aside(name, f"not a valid record: {exc}")
        if foreign:
            shown = ", ".join(repr(name) for name in foreign[:_FOREIGN_SHOWN])
            more = (
                f" and {len(foreign) - _FOREIGN_SHOWN} more"
                if len(foreign) > _FOREIGN_SHOWN
                else ""
            )
            log.warning(
                "state dir %s: left alone %d entries that are not restore records (%s%s); "
                "give --state-dir a directory of zeusd's own",
                self.path,
                len(foreign),
                shown,
                more,
            )
        return records

    def _read(self, name: str) -> bytes:
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd
            )
        except OSError as exc:
            raise BadRecord(f"cannot open it: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRecord("not a regular file")
            if st.st_size > MAX_RECORD_BYTES:
                raise BadRecord(f"{st.st_size} bytes: too big for a record")
            return os.read(fd, MAX_RECORD_BYTES + 1)
        finally:
            os.close(fd)

    def set_aside(self, name: str, why: str) -> None:
        """Move *name* into set-aside/ (never deleted: an admin may want to look at it)."""
        target = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.{name}"
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(ASIDE_DIR, 0o700, dir_fd=self._fd)
            os.rename(
                name, os.path.join(ASIDE_DIR, target), src_dir_fd=self._fd, dst_dir_fd=self._fd
            )
        except OSError as exc:
            log.warning(
                "state dir: %r (%s) cannot be moved aside: %s",
                name,
                why,
                exc.strerror,
            )
            return
        log.warning(
            "state dir: %r set aside (%s): moved to %s",
            name,
            why,
            os.path.join(self.path, ASIDE_DIR, target),
        )

    def names(self) -> Iterator[str]:
        """The record files present now (for tests and the clean-exit check)."""
        for name in sorted(os.listdir(self._fd)):
            if _RECORD_NAME.fullmatch(name):
                yield name


def _check_private(path: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"--state-dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"--state-dir {path} belongs to uid {st.st_uid}, not to this daemon's uid "
            f"{os.geteuid()}; refusing to trust records another user could have written"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        raise StateDirError(
            f"--state-dir {path} is writable by {who} "
            f"(mode {stat.S_IMODE(st.st_mode):03o}); others could plant restore records: "
            f"chmod go-w {path}"
        )
