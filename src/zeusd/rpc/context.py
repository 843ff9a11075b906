"""What every method handler can reach: the node's GPUs, their lanes and the daemon's facts."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
import trio
from jsonrpcserver.result import Success
from outcome import Outcome

from zeusd.gpu.backend import NvmlCallError, NvmlDevice
from zeusd.gpu.commands import GpuCommand, GpuTable
from zeusd.gpu.lanes import GpuLanes, Job
from zeusd.rpc.errors import DeviceError


@attrs.frozen(kw_only=True)
class Context:
    """The daemon state handlers work with; one per daemon, shared by all connections."""

    version: str
    backend: str
    gpus: GpuTable
    devices: Sequence[NvmlDevice]
    lanes: GpuLanes
    enabled_groups: tuple[str, ...]
    auth_required: bool = False

    def submit(self, command: GpuCommand) -> Awaitable[Any]:
        """Queue *command* on each target GPU's lane now; await the result later.

        Queuing happens before this returns, so the order in which lines were read is the
        order in which each GPU sees them.
        """
        jobs = [
            (gpu.index, self.lanes.submit(gpu.index, _bind(command, self.devices[gpu.index])))
            for gpu in command.gpus
        ]
        return _collect(self.lanes, command, jobs)


def _bind(command: GpuCommand, device: NvmlDevice) -> Any:
    return lambda: command.run(device)


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
        except NvmlCallError as exc:
            errors[gpu] = exc.detail()
    if errors:
        raise DeviceError(succeeded=list(values), errors=errors)
    return Success(command.result(values))
