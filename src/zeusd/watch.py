"""``zeusctl watch``: a live view of the node's GPUs (and CPUs), refreshed in place.

Like ``nvidia-smi dmon``, but through zeusd, so any user who may read can run it. Drawn
with rich (a table redrawn in place on a terminal; one table per refresh when stdout is
not a terminal). Ctrl-C ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from zeusd.client import ZeusdClient, ZeusdConnectionError, ZeusdRpcError
from zeusd.client.errors import DeviceError

CPU_READ = "cpu-read"


@attrs.frozen
class GpuRow:
    id: int
    name: str
    power_w: float | None
    limit_w: float | None
    energy_j: float | None  # since the watch started
    gpu_lock: str
    mem_lock: str


@attrs.frozen
class CpuRow:
    id: int
    package_w: float | None
    dram_w: float | None
    energy_j: float | None  # package, since the watch started


@attrs.frozen
class Frame:
    """One refresh: what the daemon said, or why it could not be asked."""

    time_s: float
    gpus: tuple[GpuRow, ...] = ()
    cpus: tuple[CpuRow, ...] = ()
    problem: str | None = None


def _lock(value: Mapping[str, int] | None) -> str:
    if value is None:
        return "-"
    return f"{value['min_clock_mhz']}-{value['max_clock_mhz']}"


def _watts(mw: int | None) -> float | None:
    return None if mw is None else mw / 1000


def _by_gpu(result: Mapping[str, Any], key: str) -> dict[int, Any]:
    return {int(gpu): value[key] for gpu, value in result.items()}


class EnergySince:
    """Energy used since the first reading, per device, over counters that may start again.

    A counter that goes back (a new daemon on simulated GPUs, a driver reload) is taken as
    counting from its new value: what was counted before is kept, nothing is subtracted.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self._used: dict[int, int] = {}

    def used(self, device: int, counter: int) -> int:
        last = self._last.get(device, counter)
        if counter >= last:
            self._used[device] = self._used.get(device, 0) + counter - last
        self._last[device] = counter
        return self._used.setdefault(device, 0)


class Sampler:
    """Reads one frame from the daemon per call; remembers the first energy readings."""

    def __init__(self, client: ZeusdClient, gpu_ids: Sequence[int] | None) -> None:
        self._client = client
        self._wanted = None if gpu_ids is None else list(gpu_ids)
        self._discovered: dict[str, Any] | None = None
        self._gpu_energy = EnergySince()
        self._cpu_energy = EnergySince()

    def _discover(self) -> dict[str, Any]:
        if self._discovered is None:
            self._discovered = self._client.call("discover")
        return self._discovered

    def sample(self) -> Frame:
        """Raises ZeusdRpcError for errors a retry cannot fix (permission, disabled group)."""
        now = time.time()
        try:
            return self._sample(now)
        except ZeusdConnectionError as exc:
            # The daemon that comes back may be another one, with other GPUs.
            self._discovered = None
            return Frame(now, problem=f"cannot reach zeusd ({exc}); retrying")
        except DeviceError as exc:
            return Frame(now, problem=f"a GPU read failed: {exc.message} {exc.data}")

    def _sample(self, now: float) -> Frame:
        info = self._discover()
        gpus = {g["id"]: g for g in info["gpus"]}
        ids = sorted(gpus) if self._wanted is None else self._wanted
        call = self._client.call
        power = {int(g): mw for g, mw in call("gpu.get_power", gpu_ids=ids)["power_mw"].items()}
        limits = _by_gpu(call("gpu.get_power_limit", gpu_ids=ids), "power_limit_mw")
        locks = {int(g): v for g, v in call("gpu.get_locked_clocks", gpu_ids=ids).items()}
        # GPUs without a counter would fail the whole read: ask only those that have one.
        counted = [i for i in ids if gpus.get(i, {}).get("cumulative_energy_available")]
        energy = (
            _by_gpu(call("gpu.get_cumulative_energy", gpu_ids=counted), "energy_mj")
            if counted
            else {}
        )
        rows = []
        for gpu in ids:
            used = self._gpu_energy.used(gpu, energy[gpu]) if gpu in energy else None
            rows.append(
                GpuRow(
                    id=gpu,
                    name=str(gpus.get(gpu, {}).get("name", "?")),
                    power_w=_watts(power.get(gpu)),
                    limit_w=_watts(limits.get(gpu)),
                    energy_j=None if used is None else used / 1000,
                    gpu_lock=_lock(locks.get(gpu, {}).get("gpu_locked_clocks")),
                    mem_lock=_lock(locks.get(gpu, {}).get("mem_locked_clocks")),
                )
            )
        cpus: list[CpuRow] = []
        if info["cpus"] and CPU_READ in info["enabled_api_groups"]:
            cpu_power = call("cpu.get_power")["power_mw"]
            cpu_energy = call("cpu.get_cumulative_energy", dram=False)
            for key in sorted(cpu_power, key=int):
                cpu = int(key)
                total = cpu_energy[key]["cpu_energy_uj"]
                used = self._cpu_energy.used(cpu, total)
                cpus.append(
                    CpuRow(
                        id=cpu,
                        package_w=_watts(cpu_power[key]["cpu_mw"]),
                        dram_w=_watts(cpu_power[key]["dram_mw"]),
                        energy_j=used / 1_000_000,
                    )
                )
        return Frame(now, tuple(rows), tuple(cpus))


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(frame: Frame, interval_s: float, where: str) -> Group:
    """The frame as rich renderables: a title line, the GPU table, the CPU table."""
    stamp = time.strftime("%H:%M:%S", time.localtime(frame.time_s))
    title = Text(f"zeusd at {where}  {stamp}  every {interval_s:g} s  (Ctrl-C to quit)")
    parts: list[Any] = [title]
    if frame.problem is not None:
        parts.append(Text(frame.problem, style="bold red"))
        return Group(*parts)
    gpus = Table(box=None, pad_edge=False, header_style="bold")
    for heading in (
        "GPU",
        "NAME",
        "POWER W",
        "LIMIT W",
        "ENERGY J",
        "GFX LOCK MHZ",
        "MEM LOCK MHZ",
    ):
        if heading == "NAME":  # the one column that gives way on a narrow terminal
            gpus.add_column(heading, no_wrap=True, overflow="ellipsis")
        else:
            gpus.add_column(heading, justify="right", no_wrap=True)
    for row in frame.gpus:
        gpus.add_row(
            str(row.id),
            row.name,
            _num(row.power_w),
            _num(row.limit_w),
            _num(row.energy_j),
            row.gpu_lock,
            row.mem_lock,
        )
    parts.append(gpus)
    if frame.cpus:
        cpus = Table(box=None, pad_edge=False, header_style="bold")
        for heading in ("CPU", "PACKAGE W", "DRAM W", "ENERGY J"):
            cpus.add_column(heading, justify="right")
        for cpu in frame.cpus:
            cpus.add_row(str(cpu.id), _num(cpu.package_w), _num(cpu.dram_w), _num(cpu.energy_j))
        parts.extend([Text(""), cpus])
    parts.append(Text("ENERGY J: used since this watch started", style="dim"))
    return Group(*parts)


def watch(
    client: ZeusdClient,
    *,
    interval_s: float,
    count: int | None,
    gpu_ids: Sequence[int] | None,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Refresh every *interval_s* until Ctrl-C (or *count* frames). Raises ZeusdRpcError."""
    sampler = Sampler(client, gpu_ids)
    where = str(client.address)
    shown = 0

    def frames() -> Any:
        nonlocal shown
        while count is None or shown < count:
            if shown:
                sleep(interval_s)
            shown += 1
            yield render(sampler.sample(), interval_s, where)

    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                for view in frames():
                    live.update(view, refresh=True)
        else:
            for view in frames():
                console.print(view)
                console.print()
    except KeyboardInterrupt:
        pass


__all__ = ["Frame", "Sampler", "ZeusdRpcError", "render", "watch"]
