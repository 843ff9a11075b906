"""The node's RAPL CPUs as methods see them: id validation, energy, power, wrap tracking."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import trio

from zeusd.core.errors import DeviceError, failure_detail
from zeusd.core.params import resolve_ids
from zeusd.cpu.rapl import RaplCpu, RaplError, power_mw, wrap_check_period_s
from zeusd.failure_runs import FailureRun

log = logging.getLogger(__name__)

#: cpu.get_power averages over this window between two energy readings (the request waits
#: for it, without blocking anything else).
POWER_WINDOW_S = 0.05


class CpuTable:
    """RAPL CPUs by id; empty when the node has no RAPL tree or cpu-read is disabled."""

    def __init__(self, cpus: Sequence[RaplCpu] = ()) -> None:
        self.cpus = tuple(cpus)
        self._by_id = {cpu.id: cpu for cpu in cpus}
        #: Per counter: a run of failed wrap checks is one log line, with a count.
        self._wrap_failures: dict[str, FailureRun] = {}

    def resolve(self, cpu_ids: object) -> tuple[RaplCpu, ...]:
        """Validate a ``cpu_ids`` param (omitted: every CPU), as gpu_ids is validated."""
        return resolve_ids("cpu_ids", "CPU", cpu_ids, self._by_id)

    def cumulative_energy(
        self, targets: Sequence[RaplCpu], *, cpu: bool, dram: bool
    ) -> dict[str, Any]:
        """The get_cumulative_energy result. Raises DeviceError if any read fails."""
        return _read_all(
            targets,
            lambda t: {
                "cpu_energy_uj": t.package.read() if cpu else None,
                "dram_energy_uj": t.dram.read() if dram and t.dram is not None else None,
            },
        )

    async def power(self, targets: Sequence[RaplCpu]) -> dict[str, Any]:
        """The get_power result: two readings POWER_WINDOW_S apart. Raises DeviceError."""
        before = _read_all(targets, _energies)
        start = time.monotonic()
        await trio.sleep(POWER_WINDOW_S)
        after = _read_all(targets, _energies)
        elapsed = time.monotonic() - start
        return {
            "timestamp_ms": int(time.time() * 1000),
            "power_mw": {key: _power(before[key], after[key], elapsed) for key in after},
        }

    def read_every_counter(self) -> None:
        """Read each counter once so that none wraps unseen; failures are only logged."""
        for target in self.cpus:
            for counter in target.counters():
                run = self._wrap_failures.get(counter.path)
                if run is None:
                    run = FailureRun(log, f"RAPL wrap check of {counter.path}")
                    self._wrap_failures[counter.path] = run
                try:
                    counter.read()
                except RaplError as exc:
                    run.failed(str(exc))
                else:
                    run.succeeded()

    async def track_wraps(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read every counter as often as wraparound requires (about once a minute on real
        hardware) -- the only periodic work of an idle daemon, and only with RAPL CPUs."""
        task_status.started()
        if not self.cpus:
            return
        period = wrap_check_period_s(self.cpus)
        log.debug("reading RAPL counters every %.1f s to catch wraparound", period)
        while True:
            await trio.sleep(period)
            self.read_every_counter()


def _energies(target: RaplCpu) -> tuple[int, int | None]:
    return target.package.read(), None if target.dram is None else target.dram.read()


def _power(before: Any, after: Any, seconds: float) -> dict[str, int | None]:
    dram = None if after[1] is None else power_mw(after[1] - before[1], seconds)
    return {"cpu_mw": power_mw(after[0] - before[0], seconds), "dram_mw": dram}


def _read_all(targets: Sequence[RaplCpu], read: Any) -> dict[str, Any]:
    # Reads fail whole: every target is tried so the error names each failing CPU.
    values: dict[str, Any] = {}
    errors: dict[int, dict[str, str]] = {}
    for target in targets:
        try:
            values[str(target.id)] = read(target)
        except RaplError as exc:
            errors[target.id] = failure_detail(exc) or {}
    if errors:
        succeeded = [t.id for t in targets if t.id not in errors]
        raise DeviceError(succeeded=succeeded, errors=errors)
    return values
