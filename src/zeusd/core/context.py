"""What every method handler can reach: the node's GPUs and CPUs, their lanes, the power
hubs and the daemon's facts."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import attrs

from zeusd.core.cpus import CpuTable
from zeusd.core.errors import DEVICE_FAILURES, DeviceError, InvalidParamsError, failure_detail
from zeusd.core.gpu_commands import GpuCommand, GpuTable
from zeusd.core.later import Later
from zeusd.core.observer import NoObserver, Observer
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.gpu.device import GpuDevice
from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError, LaneFullError
from zeusd.gpu.ledger import SettingsLedger
from zeusd.stream.hub import PowerHub


@attrs.frozen(kw_only=True)
class Context:
    """The daemon state handlers work with; one per daemon, shared by all connections."""

    version: str
    backend: str
    gpus: GpuTable
    devices: Sequence[GpuDevice]
    lanes: GpuLanes
    #: Who may call what.
    policy: Policy
    #: Who changed which GPU setting, and what it was before; see zeusd.gpu.ledger.
    ledger: SettingsLedger = attrs.field(factory=SettingsLedger)
    #: RAPL CPUs; empty unless cpu-read is enabled.
    cpus: CpuTable = attrs.field(factory=CpuTable)
    #: Power subscriptions; None where the daemon runs without them (unit tests).
    gpu_power: PowerHub | None = None
    cpu_power: PowerHub | None = None
    #: --max-subscriptions-per-connection (the daemon-wide cap is the hubs' shared budget).
    max_subscriptions_per_connection: int = 32
    #: Told of every call and every GPU written (the metrics count them).
    observer: Observer = attrs.field(factory=NoObserver)

    def submit(self, command: GpuCommand, session: Session | None = None) -> Later[Any]:
        """Queue *command* on each target GPU's lane now; await the result later.

        Queuing happens before this returns, so the order in which lines were read is the
        order in which each GPU sees them. A write made for *session* is recorded in the
        ledger, so that it can be undone. Raises InvalidParamsError when a lane is full.
        """
        settings = getattr(command, "settings", ())
        try:
            jobs = self.lanes.submit(
                [(g.index, self._bind(command, g.index, settings, session)) for g in command.gpus],
                # Reads of one kind queued back to back on a GPU may share one driver call.
                key=None if settings else share_key(command),
                owner=None if session is None else session.id,
            )
        except LaneFullError as exc:
            flag = "--max-queued-per-client" if exc.per_owner else "--max-queued-per-gpu"
            raise InvalidParamsError(
                "gpu_ids", f"{exc} ({flag} {exc.limit}); wait for replies before sending more"
            ) from None
        except LaneClosedError as exc:
            # The lanes close together, at shutdown: nothing of this command was queued.
            detail = failure_detail(exc) or {}
            raise DeviceError(
                succeeded=[], errors={g.index: detail for g in command.gpus}
            ) from None
        return _Pending(command, jobs)

    def _bind(
        self, command: GpuCommand, gpu: int, settings: tuple[str, ...], session: Session | None
    ) -> Any:
        device = self.devices[gpu]
        if session is None or not settings:
            return lambda: command.run(device)
        self.ledger.note_write(session.id, gpu)
        # The session's restore-on-close as of this line: later lines may change it, and
        # their own lane jobs update the ledger in order.
        return functools.partial(
            self.ledger.write,
            session.id,
            session.describe(),
            session.restore_on_close,
            gpu,
            settings,
            device,
            lambda: command.run(device),
        )


def share_key(command: GpuCommand) -> Hashable:
    """Equal for two reads that make the same driver call on a GPU: class and params."""
    kind = type(command)
    return (kind, *(getattr(command, name) for name in _param_names(kind)))


@functools.cache
def _param_names(kind: type) -> tuple[str, ...]:
    """A command class's params: its attrs fields but the target GPUs (found once)."""
    return tuple(field.name for field in attrs.fields(kind) if field.name != "gpus")


class _Pending(Later[Any]):
    """A submitted command's result: done once every job is. No task waits for it: the
    last job's report (on the trio thread) collects the values, and what follows (the
    audit, the reply) runs right there, chained with ``then``/``on_done``."""

    __slots__ = ("_left", "command", "jobs")

    def __init__(self, command: GpuCommand, jobs: list[Job]) -> None:
        super().__init__()
        self.command, self.jobs = command, jobs
        self._left = len(jobs)
        for job in jobs:
            if job.result is None:
                job.notify = self._job_done
            else:
                self._left -= 1
        if not self._left:
            self._collect()

    def _job_done(self) -> None:
        self._left -= 1
        if not self._left:
            self._collect()

    def _collect(self) -> None:
        try:
            value = collect(self.command, self.jobs)
        except Exception as exc:  # a DeviceError, or a bug in result()
            self.fail(exc)
            return
        self.resolve(value)


def collect(command: GpuCommand, jobs: list[Job]) -> Any:
    """The command's result from its finished jobs; raises DeviceError if any failed."""
    values: dict[int, Any] = {}
    errors: dict[int, dict[str, str]] = {}
    for job in jobs:
        assert job.result is not None
        try:
            values[job.gpu] = job.result.unwrap()
        except DEVICE_FAILURES as exc:
            errors[job.gpu] = failure_detail(exc) or {}
    if errors:
        raise DeviceError(succeeded=list(values), errors=errors)
    return command.result(values)
