"""What every method handler can reach: the node's GPUs and CPUs, their lanes, the power
hubs and the daemon's facts."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
import trio
from outcome import Outcome

from zeusd.core.cpus import CpuTable
from zeusd.core.errors import DEVICE_FAILURES, DeviceError, failure_detail
from zeusd.core.gpu_commands import GpuCommand, GpuTable
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.gpu.device import GpuDevice
from zeusd.gpu.lanes import GpuLanes, Job, LaneClosedError
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

    def submit(self, command: GpuCommand, session: Session | None = None) -> Awaitable[Any]:
        """Queue *command* on each target GPU's lane now; await the result later.

        Queuing happens before this returns, so the order in which lines were read is the
        order in which each GPU sees them. A write made for *session* is recorded in the
        ledger, so that it can be undone.
        """
        try:
            jobs = [
                (gpu.index, self.lanes.submit(gpu.index, self._bind(command, gpu.index, session)))
                for gpu in command.gpus
            ]
        except LaneClosedError as exc:
            # The lanes close together, at shutdown: nothing of this command was queued.
            detail = failure_detail(exc) or {}
            raise DeviceError(
                succeeded=[], errors={g.index: detail for g in command.gpus}
            ) from None
        return _collect(self.lanes, command, jobs)

    def _bind(self, command: GpuCommand, gpu: int, session: Session | None) -> Any:
        device = self.devices[gpu]
        settings = getattr(command, "settings", ())
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


async def _collect(lanes: GpuLanes, command: GpuCommand, jobs: list[tuple[int, Job]]) -> Any:
    outcomes: dict[int, Outcome[Any]] = {}

    async def wait(gpu: int, job: Job) -> None:
        outcomes[gpu] = await lanes.wait(gpu, job)

    if len(jobs) == 1:
        await wait(*jobs[0])
    else:
        # Waiting runs a lane when it is idle, so the GPUs must be waited on concurrently.
        async with trio.open_nursery() as nursery:
            for gpu, job in jobs:
                nursery.start_soon(wait, gpu, job)
    values: dict[int, Any] = {}
    errors: dict[int, dict[str, str]] = {}
    for gpu, _ in jobs:
        try:
            values[gpu] = outcomes[gpu].unwrap()
        except DEVICE_FAILURES as exc:
            errors[gpu] = failure_detail(exc) or {}
    if errors:
        raise DeviceError(succeeded=list(values), errors=errors)
    return command.result(values)
