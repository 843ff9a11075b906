"""What every method handler can reach: the node's GPUs and CPUs, their lanes, the power
hubs and the daemon's facts."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
from jsonrpcserver.result import Success

from zeusd.cpu.table import CpuTable
from zeusd.gpu.backend import NvmlCallError, NvmlDevice
from zeusd.gpu.commands import GpuCommand, GpuTable
from zeusd.gpu.lanes import GpuLanes
from zeusd.rpc.errors import DeviceError
from zeusd.stream.hub import PowerHub


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
    #: RAPL CPUs; empty unless cpu-read is enabled.
    cpus: CpuTable = attrs.field(factory=CpuTable)
    #: Power subscriptions; None where the daemon runs without them (unit tests).
    gpu_power: PowerHub | None = None
    cpu_power: PowerHub | None = None

    def submit(self, command: GpuCommand) -> Awaitable[Any]:
        """Queue *command* on each target GPU's lane now; await the result later.

        Queuing happens before this returns, so the order in which lines were read is the
        order in which each GPU sees them.
        """
        jobs = [
            (gpu.index, self.lanes.submit(gpu.index, _bind(command, self.devices[gpu.index])))
            for gpu in command.gpus
        ]
        return _collect(command, jobs)


def _bind(command: GpuCommand, device: NvmlDevice) -> Any:
    return lambda: command.run(device)


async def _collect(command: GpuCommand, jobs: list[tuple[int, Any]]) -> Any:
    values: dict[int, Any] = {}
    errors: dict[int, dict[str, str]] = {}
    # Waiting in order is fine: the request completes only when every GPU is done anyway.
    for gpu, job in jobs:
        result = await job.wait()
        try:
            values[gpu] = result.unwrap()
        except NvmlCallError as exc:
            errors[gpu] = exc.detail()
    if errors:
        raise DeviceError(succeeded=list(values), errors=errors)
    return Success(command.result(values))
