"""Who changed which GPU setting, and what it was before: what restoring needs.

For every (GPU, setting) the ledger keeps the session that wrote it last, the value each
session found before its own first change, and the value the daemon found before the first
change made through it. All of it is updated inside the GPU's lane job that does the write
(the value before is read in that same job), so it follows the order in which each GPU saw
the writes. Restores are lane jobs too, and check ownership when they run: a write queued
before a restore makes its writer the owner, and the restore is skipped.

NVML cannot read locked clocks back, so their "value before" is unknown: restoring them
means resetting them (removing the lock), which is what they were unless something outside
zeusd had locked them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from zeusd.gpu.backend import NvmlCallError, NvmlDevice
from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError

log = logging.getLogger(__name__)

POWER_LIMIT = "power_limit"
PERSISTENCE_MODE = "persistence_mode"
GPU_LOCKED_CLOCKS = "gpu_locked_clocks"
MEM_LOCKED_CLOCKS = "mem_locked_clocks"

Key = tuple[int, str]


class _Unknown:
    def __repr__(self) -> str:
        return "unknown"


#: The value before could not be read.
UNKNOWN: Any = _Unknown()


def _restore_power_limit(device: NvmlDevice, value: Any) -> None:
    if value is UNKNOWN:
        device.reset_power_limit()  # the best guess left: the GPU's default
    else:
        device.set_power_limit(value)


def _restore_persistence_mode(device: NvmlDevice, value: Any) -> None:
    if value is UNKNOWN:
        raise NvmlCallError("NVML_ERROR_UNKNOWN", "the mode before the change could not be read")
    device.set_persistence_mode(value)


def _unreadable(device: NvmlDevice) -> Any:
    return UNKNOWN


@attrs.frozen
class Setting:
    read: Callable[[NvmlDevice], Any]
    restore: Callable[[NvmlDevice, Any], None]


SETTINGS: dict[str, Setting] = {
    POWER_LIMIT: Setting(NvmlDevice.get_power_limit, _restore_power_limit),
    PERSISTENCE_MODE: Setting(NvmlDevice.get_persistence_mode, _restore_persistence_mode),
    GPU_LOCKED_CLOCKS: Setting(_unreadable, lambda d, _: d.reset_gpu_locked_clocks()),
    MEM_LOCKED_CLOCKS: Setting(_unreadable, lambda d, _: d.reset_mem_locked_clocks()),
}


@attrs.define
class _Change:
    #: The value before this session's first change.
    before: Any
    #: Who owned the setting then: it owns it again once this session's change is undone.
    previous_owner: int | None


class SettingsLedger:
    """Shared by every lane thread; a lock guards the dictionaries, never an NVML call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[Key, int] = {}
        self._by_session: dict[int, dict[Key, _Change]] = {}
        self._daemon_before: dict[Key, Any] = {}

    # -- in the lane thread of a write ---------------------------------------------------

    def write(
        self,
        session: int,
        gpu: int,
        settings: Sequence[str],
        device: NvmlDevice,
        run: Callable[[], Any],
    ) -> Any:
        """Run a write on *device*, first reading what it is about to change (if unknown)."""
        keys = [(gpu, name) for name in settings]
        with self._lock:
            mine = self._by_session.get(session, {})
            needed = [k for k in keys if k not in mine or k not in self._daemon_before]
        before = {key: self._read(device, key) for key in needed}
        value = run()  # a failed write changed nothing: it raises past the bookkeeping
        with self._lock:
            mine = self._by_session.setdefault(session, {})
            for key in keys:
                if key not in mine:
                    mine[key] = _Change(before[key], self._owner.get(key))
                self._daemon_before.setdefault(key, before.get(key, UNKNOWN))
                self._owner[key] = session
        return value

    @staticmethod
    def _read(device: NvmlDevice, key: Key) -> Any:
        try:
            return SETTINGS[key[1]].read(device)
        except NvmlCallError as exc:
            log.warning("GPU %d: cannot read %s before changing it: %s", key[0], key[1], exc)
            return UNKNOWN

    # -- from trio: when a connection closes, and at shutdown ----------------------------

    def forget(self, session: int) -> None:
        """The session closed without restore: keep nothing of it but its ownership."""
        with self._lock:
            self._by_session.pop(session, None)

    def restore_session(
        self, session: int, who: str, lanes: GpuLanes, devices: Sequence[NvmlDevice]
    ) -> list[Job]:
        """Queue, on each GPU's lane, putting back what *session* changed. Never blocks."""
        with self._lock:
            changes = self._by_session.pop(session, {})
        jobs = [
            self._queue(
                lanes, key, functools.partial(self._undo, session, who, key, change, devices)
            )
            for key, change in changes.items()
        ]
        return [job for job in jobs if job is not None]

    def restore_all(self, lanes: GpuLanes, devices: Sequence[NvmlDevice]) -> list[Job]:
        """Queue putting every setting changed through the daemon back to its first value."""
        with self._lock:
            everything = dict(self._daemon_before)
        jobs = [
            self._queue(lanes, key, functools.partial(self._undo_all, key, before, devices))
            for key, before in everything.items()
        ]
        return [job for job in jobs if job is not None]

    @staticmethod
    def _queue(lanes: GpuLanes, key: Key, fn: Callable[[], None]) -> Job | None:
        try:
            return lanes.submit_detached(key[0], fn)
        except LaneClosedError:
            log.warning("GPU %d: %s not restored: the daemon stopped first", *key)
            return None

    # -- in the lane thread of a restore -------------------------------------------------

    def _undo(
        self, session: int, who: str, key: Key, change: _Change, devices: Sequence[NvmlDevice]
    ) -> None:
        gpu, name = key
        with self._lock:
            owner = self._owner.get(key)
        if owner != session:
            log.info(
                "GPU %d: %s not restored for %s: connection #%s changed it later and owns it",
                gpu,
                name,
                who,
                owner,
            )
            return
        try:
            SETTINGS[name].restore(devices[gpu], change.before)
        except NvmlCallError as exc:
            log.warning("GPU %d: restoring %s for %s failed: %s", gpu, name, who, exc)
            return
        with self._lock:
            if change.previous_owner is None:
                self._owner.pop(key, None)
            else:
                self._owner[key] = change.previous_owner
        log.info(
            "GPU %d: %s restored to %r for %s (connection closed)", gpu, name, change.before, who
        )

    def _undo_all(self, key: Key, before: Any, devices: Sequence[NvmlDevice]) -> None:
        gpu, name = key
        try:
            SETTINGS[name].restore(devices[gpu], before)
        except NvmlCallError as exc:
            log.warning("GPU %d: restoring %s at exit failed: %s", gpu, name, exc)
            return
        with self._lock:
            self._owner.pop(key, None)
        log.info("GPU %d: %s restored to %r (daemon exiting)", gpu, name, before)
