"""Read RAPL energy counters from the powercap sysfs tree, corrected for wraparound.

Layout (``--rapl-root``, default ``/sys/class/powercap``): one package zone per CPU socket,
``intel-rapl:N`` (its ``name`` is ``package-N``), and under it subzones such as
``intel-rapl:N:M``; the one whose ``name`` is ``dram`` measures the socket's memory. Each zone
has ``energy_uj`` (a counter that wraps to 0 after ``max_energy_range_uj``).

Counters are read synchronously on the event loop: a sysfs read takes microseconds, far less
than a thread hop would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import attrs

#: A generous upper bound on what one RAPL zone can draw; it sets how often counters must be
#: read so that no wrap is missed (see :func:`wrap_check_period_s`).
ASSUMED_MAX_ZONE_W = 1000.0
#: Bounds for that period: never busier than this, never lazier than that.
MIN_WRAP_CHECK_S = 0.1
MAX_WRAP_CHECK_S = 60.0
#: The stable code name RAPL failures carry in a -32001 error's ``nvml_error`` slot.
RAPL_READ_FAILED = "RAPL_READ_FAILED"

_PACKAGE_DIR = re.compile(r"^intel-rapl:(\d+)$")


class RaplError(Exception):
    """A RAPL file could not be read or made no sense; the message says which and why."""

    def detail(self) -> dict[str, str]:
        return {"nvml_error": RAPL_READ_FAILED, "message": str(self)}


def power_mw(energy_uj: int, seconds: float) -> int:
    """Average power in milliwatts of *energy_uj* spent over *seconds*."""
    return round(energy_uj / seconds / 1000) if seconds > 0 else 0


class RaplUnavailableError(Exception):
    """There is no usable RAPL tree; the message says why (for a startup error)."""


def _read_int(path: str) -> int:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii", "replace").strip()
    except PermissionError:
        raise RaplError(f"cannot read {path}: permission denied (zeusd must run as root)") from None
    except OSError as exc:
        raise RaplError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        value = int(text)
    except ValueError:
        raise RaplError(f"{path} does not hold an integer (got {text[:40]!r})") from None
    if value < 0:
        raise RaplError(f"{path} holds a negative value ({value})")
    return value


def _read_name(directory: str) -> str:
    try:
        with open(os.path.join(directory, "name"), encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


class EnergyCounter:
    """One zone's energy, kept cumulative and monotonic across counter wraparound.

    The first reading is the raw counter; each later reading adds the delta since the
    previous one, plus ``max_energy_range_uj`` when the counter went backwards (wrapped).
    Correct as long as it is read at least once per wrap (see :func:`wrap_check_period_s`).
    """

    def __init__(self, directory: str, max_range_uj: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, "energy_uj")
        self.max_range_uj = max_range_uj
        self._last_raw: int | None = None
        self._total = 0

    @classmethod
    def open(cls, directory: str) -> EnergyCounter:
        """Check the zone is readable now, so a broken tree fails at start-up, not later."""
        max_range = _read_int(os.path.join(directory, "max_energy_range_uj"))
        if max_range == 0:
            raise RaplError(f"{directory}/max_energy_range_uj is 0")
        counter = cls(directory, max_range)
        counter.read()
        return counter

    def read(self) -> int:
        """Cumulative energy in microjoules. Raises RaplError."""
        raw = _read_int(self.path)
        if self._last_raw is None:
            self._total = raw
        else:
            delta = raw - self._last_raw
            if delta < 0:
                delta += self.max_range_uj
            self._total += delta
        self._last_raw = raw
        return self._total


@attrs.frozen
class RaplCpu:
    """One CPU package (socket) and, where the tree has one, its DRAM zone."""

    id: int
    package: EnergyCounter
    dram: EnergyCounter | None

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "dram_available": self.dram is not None}

    def counters(self) -> tuple[EnergyCounter, ...]:
        return (self.package,) if self.dram is None else (self.package, self.dram)


def open_rapl(root: str) -> tuple[RaplCpu, ...]:
    """Every package zone under *root*, by id. Raises RaplUnavailableError saying why."""
    try:
        entries = os.listdir(root)
    except OSError as exc:
        raise RaplUnavailableError(
            f"no RAPL powercap tree at {root}: {exc.strerror or exc}"
        ) from None
    packages = sorted(
        (int(m.group(1)), name) for name in entries if (m := _PACKAGE_DIR.match(name))
    )
    if not packages:
        raise RaplUnavailableError(f"no RAPL package zones (intel-rapl:N) under {root}")
    cpus = []
    for index, name in packages:
        directory = os.path.join(root, name)
        try:
            package = EnergyCounter.open(directory)
            dram = _open_dram(directory, name)
        except RaplError as exc:
            raise RaplUnavailableError(f"RAPL package zone {name} is unusable: {exc}") from None
        cpus.append(RaplCpu(index, package, dram))
    return tuple(cpus)


def _open_dram(package_dir: str, package_name: str) -> EnergyCounter | None:
    prefix = package_name + ":"
    for sub in sorted(os.listdir(package_dir)):
        directory = os.path.join(package_dir, sub)
        if sub.startswith(prefix) and _read_name(directory) == "dram":
            return EnergyCounter.open(directory)
    return None


def wrap_check_period_s(cpus: Sequence[RaplCpu]) -> float:
    """How often every counter must be read so that none can wrap twice in between.

    Half the time the smallest counter range lasts at ASSUMED_MAX_ZONE_W, clamped to
    [MIN_WRAP_CHECK_S, MAX_WRAP_CHECK_S]. Real ranges (~262 kJ) give the 60 s ceiling.
    """
    ranges = [c.max_range_uj for cpu in cpus for c in cpu.counters()]
    if not ranges:
        return MAX_WRAP_CHECK_S
    seconds = min(ranges) / (ASSUMED_MAX_ZONE_W * 1e6) / 2
    return min(MAX_WRAP_CHECK_S, max(MIN_WRAP_CHECK_S, seconds))
