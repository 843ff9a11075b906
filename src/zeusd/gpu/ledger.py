"""Who changed which GPU setting, and what it was before: what restoring needs.

For every (GPU, setting) the ledger keeps a stack of *layers*, oldest first: one per run of
writes by one session, holding the value found before that run and whether the session
wants its changes undone (restore-on-close). Undoing is in stack order, whatever the order
in which sessions close:

- a restore-on-close session that closes marks its layers *closed*; closed layers on top of
  the stack are taken off, and the setting goes back to the value before the lowest one
  taken. A closed layer under an open one waits for it: A sets 300 W, B then 400 W, A
  closes (nothing yet: B's change is on top), B closes: back to the value before A's.
- a session without restore-on-close that closes keeps its change, and with it everything
  under it: nothing below can be restored any more.

The ledger also keeps the value the daemon found before the first change it made
(``--restore-on-exit``), and, with a :class:`RecordStore`, keeps on disk for each setting
what a restart after a crash must do (see :meth:`SettingsLedger._plan`). Every change of a
GPU's entries happens in a job on that GPU's lane (the value before is read in the same job
as the write), so the ledger follows the order in which each GPU saw the writes.

NVML cannot read locked clocks back, so their "value before" is unknown: restoring them
means resetting them (removing the lock), which is what they were unless something outside
zeusd had locked them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from zeusd.gpu.backend import NvmlCallError
from zeusd.gpu.device import GpuDevice
from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError, LaneFullError
from zeusd.gpu.records import Record, RecordStore, boot_id

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


def _restore_power_limit(device: GpuDevice, value: Any) -> None:
    if value is UNKNOWN:
        device.reset_power_limit()  # the best guess left: the GPU's default
    else:
        device.set_power_limit(value)


def _restore_persistence_mode(device: GpuDevice, value: Any) -> None:
    if value is UNKNOWN:
        raise NvmlCallError("NVML_ERROR_UNKNOWN", "the mode before the change could not be read")
    device.set_persistence_mode(value)


def _unreadable(device: GpuDevice) -> Any:
    return UNKNOWN


@attrs.frozen
class Setting:
    read: Callable[[GpuDevice], Any]
    restore: Callable[[GpuDevice, Any], None]


SETTINGS: dict[str, Setting] = {
    POWER_LIMIT: Setting(lambda d: d.get_power_limit(), _restore_power_limit),
    PERSISTENCE_MODE: Setting(lambda d: d.get_persistence_mode(), _restore_persistence_mode),
    GPU_LOCKED_CLOCKS: Setting(_unreadable, lambda d, _: d.reset_gpu_locked_clocks()),
    MEM_LOCKED_CLOCKS: Setting(_unreadable, lambda d, _: d.reset_mem_locked_clocks()),
}


def restore_setting(device: GpuDevice, name: str, value: Any) -> None:
    """Put setting *name* of *device* back to *value* (UNKNOWN: its best guess)."""
    SETTINGS[name].restore(device, value)


def to_record_value(value: Any) -> int | bool | None:
    return None if value is UNKNOWN else value


def from_record_value(value: int | bool | None) -> Any:
    return UNKNOWN if value is None else value


@attrs.define(eq=False)
class _Layer:
    session: int
    who: str
    #: The value before this run of writes by *session*.
    before: Any
    #: The session wants its changes undone when it closes.
    restore: bool
    #: The session has closed with restore: undo this layer once none is open above it.
    closed: bool = False


class RecordWriteError(NvmlCallError):
    """The restore record could not be written, so the write was not made."""


class SettingsLedger:
    """Shared by every lane thread; a lock guards the dictionaries, never an NVML call."""

    def __init__(
        self,
        store: RecordStore | None = None,
        uuids: Sequence[str] = (),
        *,
        restore_on_exit: bool = False,
        on_restore: Callable[[], None] = lambda: None,
    ) -> None:
        self._lock = threading.Lock()
        #: Called, in the lane thread, after each setting put back (the metrics count them).
        self._on_restore = on_restore
        self._layers: dict[Key, list[_Layer]] = {}
        self._daemon_before: dict[Key, Any] = {}
        #: Keys each session has layers on (lane threads) and GPUs it sent writes to (trio).
        self._keys_of: dict[int, set[Key]] = {}
        self._gpus_of: dict[int, set[int]] = {}
        self._store = store
        self._uuids = tuple(uuids)
        self._restore_on_exit = restore_on_exit
        self._boot_id = boot_id() if store is not None else ""
        #: What is on disk for each key, so an unchanged plan costs no write.
        self._on_disk: dict[Key, Record | None] = {}

    # -- from trio, as a write is queued -------------------------------------------------

    def note_write(self, session: int, gpu: int) -> None:
        """*session* queued a write on *gpu*: its close must visit that GPU's lane."""
        with self._lock:
            self._gpus_of.setdefault(session, set()).add(gpu)

    # -- in the lane thread of a write ---------------------------------------------------

    def write(
        self,
        session: int,
        who: str,
        restore: bool,
        gpu: int,
        settings: Sequence[str],
        device: GpuDevice,
        run: Callable[[], Any],
    ) -> Any:
        """Run a write on *device*: read what it is about to change (where not known yet),
        record on disk what undoing it needs, then write."""
        keys = [(gpu, name) for name in settings]
        with self._lock:
            needed = [
                k for k in keys if self._new_layer(k, session) or k not in self._daemon_before
            ]
        before = {key: self._read(device, key) for key in needed}
        with self._lock:
            after: dict[Key, tuple[list[_Layer], Any]] = {}
            for key in keys:
                layers = list(self._layers.get(key, ()))
                if self._new_layer(key, session):
                    layers.append(_Layer(session, who, before[key], restore))
                after[key] = (layers, self._daemon_before.get(key, before.get(key, UNKNOWN)))
            old = {key: self._on_disk.get(key) for key in keys}
        try:
            self._save({key: self._plan(key, *after[key]) for key in keys})
        except OSError as exc:
            self._save(old, quiet=True)
            log.warning("GPU %d: write refused: cannot record how to undo it: %s", gpu, exc)
            raise RecordWriteError(
                "NVML_ERROR_UNKNOWN",
                f"not changed: the restore record could not be written ({exc.strerror or exc})",
            ) from None
        try:
            value = run()
        except BaseException:
            self._save(old, quiet=True)  # a failed write changed nothing
            raise
        with self._lock:
            for key, (layers, daemon_before) in after.items():
                self._layers[key] = layers
                self._daemon_before.setdefault(key, daemon_before)
                self._keys_of.setdefault(session, set()).add(key)
        return value

    def _new_layer(self, key: Key, session: int) -> bool:
        layers = self._layers.get(key)
        return not layers or layers[-1].session != session

    @staticmethod
    def _read(device: GpuDevice, key: Key) -> Any:
        try:
            return SETTINGS[key[1]].read(device)
        except NvmlCallError as exc:
            log.warning("GPU %d: cannot read %s before changing it: %s", key[0], key[1], exc)
            return UNKNOWN

    # -- from trio: restore-on-close changed, a connection closed, shutdown --------------

    def set_restore(self, session: int, enabled: bool, lanes: GpuLanes) -> list[tuple[int, Job]]:
        """Queue, on each GPU *session* wrote to, marking its changes (not) to be restored,
        on disk too. Await the jobs before saying it is done. Never blocks."""
        with self._lock:
            gpus = sorted(self._gpus_of.get(session, ()))
        return [
            (
                gpu,
                lanes.submit(
                    [(gpu, functools.partial(self._set_restore_on, session, gpu, enabled))]
                )[0],
            )
            for gpu in gpus
        ]

    def close_session(
        self, session: int, restore: bool, lanes: GpuLanes, devices: Sequence[GpuDevice]
    ) -> list[Job]:
        """Queue, on each GPU *session* wrote to, undoing (*restore*) or keeping its changes."""
        with self._lock:
            gpus = sorted(self._gpus_of.pop(session, ()))
        jobs = [
            self._queue(
                lanes,
                gpu,
                f"connection #{session}'s settings",
                functools.partial(self._close_on, session, restore, gpu, devices),
            )
            for gpu in gpus
        ]
        return [job for job in jobs if job is not None]

    def queue_exit_restores(
        self,
        lanes: GpuLanes,
        devices: Sequence[GpuDevice],
        sessions: Sequence[tuple[int, bool]],
        *,
        everything: bool,
    ) -> list[Job]:
        """At shutdown, just before the lanes close: queue one job on every GPU that closes
        the still-open *sessions* (id, restore-on-close) there, or with *everything* puts
        every setting changed through the daemon back to its first value.

        The job reads the ledger when it runs, so writes still queued ahead of it are
        covered. A GPU that never gets to it (a hung call) has it abandoned: _abandoned.
        """
        with self._lock:
            for session, _ in sessions:
                self._gpus_of.pop(session, None)  # closed here, not when the connection goes
        jobs = []
        for gpu in range(len(devices)):
            if everything:
                fn = functools.partial(self._undo_all_on, gpu, devices)
            else:
                fn = functools.partial(self._close_all_on, list(sessions), gpu, devices)
            abandoned = functools.partial(self._abandoned, gpu)
            try:
                jobs += lanes.submit([(gpu, fn)], on_abandon=abandoned)
            except (LaneClosedError, LaneFullError):
                abandoned()
        return jobs

    def _abandoned(self, gpu: int) -> None:
        """The daemon stops without having run GPU *gpu*'s exit restore.

        With --state-dir its records stay on disk, and the next start restores from them.
        """
        with self._lock:
            names = sorted({name for g, name in self._layers if g == gpu})
            if self._restore_on_exit:
                names = sorted({*names, *(name for g, name in self._daemon_before if g == gpu)})
        if names:
            log.error(
                "GPU %d: restore at exit abandoned (its driver call did not finish): %s not"
                " restored",
                gpu,
                ", ".join(names),
            )

    @staticmethod
    def _queue(lanes: GpuLanes, gpu: int, what: str, fn: Callable[[], None]) -> Job | None:
        try:
            return lanes.submit([(gpu, fn)])[0]
        except (LaneClosedError, LaneFullError) as exc:
            log.warning("GPU %d: %s not restored: %s", gpu, what, exc)
            return None

    # -- in lane threads -----------------------------------------------------------------

    def _set_restore_on(self, session: int, gpu: int, enabled: bool) -> None:
        with self._lock:
            keys = [k for k in self._keys_of.get(session, ()) if k[0] == gpu]
            for key in keys:
                for layer in self._layers.get(key, ()):
                    if layer.session == session:
                        layer.restore = enabled
        self._save_current(keys)

    def _close_on(
        self, session: int, restore: bool, gpu: int, devices: Sequence[GpuDevice]
    ) -> None:
        with self._lock:
            keys = sorted(k for k in self._keys_of.get(session, ()) if k[0] == gpu)
            left = self._keys_of.get(session, set()) - set(keys)
            if left:
                self._keys_of[session] = left
            else:
                self._keys_of.pop(session, None)
            dropped: list[tuple[Key, _Layer]] = []
            for key in keys:
                layers = self._layers.get(key, [])
                mine = [i for i, layer in enumerate(layers) if layer.session == session]
                if not mine:
                    continue  # a later writer kept its change: nothing of ours is left
                if restore:
                    for i in mine:
                        layers[i].closed = layers[i].restore = True
                else:
                    # Our change stays, and with it whatever was under it.
                    dropped += [
                        (key, layer) for layer in layers[: mine[-1]] if layer.session != session
                    ]
                    del layers[: mine[-1] + 1]
        for key, layer in dropped:
            log.info(
                "GPU %d: %s not restored for %s: connection #%d changed it later and kept it",
                *key,
                layer.who,
                session,
            )
        for key in keys:
            self._settle(key, devices[gpu])

    def _settle(self, key: Key, device: GpuDevice) -> None:
        """Take closed layers off the top of *key*'s stack and put back the value before."""
        gpu, name = key
        with self._lock:
            layers = self._layers.get(key, [])
            taken: list[_Layer] = []
            while layers and layers[-1].closed:
                taken.append(layers.pop())
            waiting = [layer for layer in layers if layer.closed]
            top = layers[-1] if layers else None
            if not layers:
                self._layers.pop(key, None)
        if taken:
            value = taken[-1].before
            who = ", ".join(dict.fromkeys(layer.who for layer in reversed(taken)))
            try:
                restore_setting(device, name, value)
            except NvmlCallError as exc:
                # The record on disk still says how to undo it: the next start tries again.
                log.warning("GPU %d: restoring %s for %s failed: %s", gpu, name, who, exc)
                return
            self._on_restore()
            log.info("GPU %d: %s restored to %r for %s (connection closed)", gpu, name, value, who)
        if waiting and top is not None:
            log.info(
                "GPU %d: %s not restored yet for %s: connection #%d changed it later; it is "
                "restored when that change is undone",
                gpu,
                name,
                ", ".join(layer.who for layer in waiting),
                top.session,
            )
        self._save_current([key])

    def _close_all_on(
        self, sessions: Sequence[tuple[int, bool]], gpu: int, devices: Sequence[GpuDevice]
    ) -> None:
        for session, restore in sessions:
            self._close_on(session, restore, gpu, devices)

    def _undo_all_on(self, gpu: int, devices: Sequence[GpuDevice]) -> None:
        with self._lock:
            everything = {k: v for k, v in self._daemon_before.items() if k[0] == gpu}
        for key, before in everything.items():
            self._undo_all(key, before, devices)

    def _undo_all(self, key: Key, before: Any, devices: Sequence[GpuDevice]) -> None:
        gpu, name = key
        try:
            restore_setting(devices[gpu], name, before)
        except NvmlCallError as exc:
            log.warning("GPU %d: restoring %s at exit failed: %s", gpu, name, exc)
            return
        self._on_restore()
        with self._lock:
            self._layers.pop(key, None)
            self._daemon_before.pop(key, None)
        log.info("GPU %d: %s restored to %r (daemon exiting)", gpu, name, before)
        self._save_current([key])

    # -- the records on disk -------------------------------------------------------------

    def _plan(self, key: Key, layers: Sequence[_Layer], daemon_before: Any) -> Record | None:
        """What a daemon starting after a crash right now must do with *key*, or None."""
        restore, before, chain, reason = True, daemon_before, list(layers), "--restore-on-exit"
        if not (self._restore_on_exit and daemon_before is not _MISSING):
            if not layers:
                return None
            kept = max((i for i, layer in enumerate(layers) if not layer.restore), default=-1)
            if kept == len(layers) - 1:
                restore, before, chain = False, layers[-1].before, [layers[-1]]
                reason = "its connection did not ask for restore-on-close"
            else:
                chain = list(layers[kept + 1 :])
                before, reason = chain[0].before, "restore-on-close"
        gpu, name = key
        return Record(
            gpu=gpu,
            uuid=self._uuids[gpu] if gpu < len(self._uuids) else "",
            setting=name,
            restore=restore,
            before=to_record_value(before),
            changed_by=", ".join(dict.fromkeys(layer.who for layer in chain))
            or "an earlier connection",
            reason=reason,
            boot_id=self._boot_id,
        )

    def _save_current(self, keys: Iterable[Key]) -> None:
        with self._lock:
            plans = {
                key: self._plan(
                    key, self._layers.get(key, ()), self._daemon_before.get(key, _MISSING)
                )
                for key in keys
            }
        try:
            self._save(plans)
        except OSError as exc:
            log.warning("cannot update the restore records in the state dir: %s", exc)

    def _save(self, plans: dict[Key, Record | None], *, quiet: bool = False) -> None:
        """Make the disk say *plans*. Raises OSError (unless *quiet*: then logs it)."""
        if self._store is None:
            return
        for key, record in plans.items():
            if self._on_disk.get(key) == record:
                continue
            try:
                if record is None:
                    self._store.remove(*key)
                else:
                    self._store.put(record)
            except OSError as exc:
                if not quiet:
                    raise
                log.warning("GPU %d: cannot update the %s restore record: %s", key[0], key[1], exc)
                continue
            self._on_disk[key] = record

    def records_left(self) -> list[str]:
        """Record files still on disk (after a clean stop: restores that failed)."""
        return [] if self._store is None else list(self._store.names())


class _Missing:
    pass


#: No value before is known: the daemon never changed this setting.
_MISSING: Any = _Missing()
