"""Fake powercap sysfs trees in a temp dir, shaped like /sys/class/powercap."""

from __future__ import annotations

import os
from collections.abc import Sequence

#: A real package counter range (about 262 kJ).
REAL_RANGE_UJ = 262_143_328_850


def write_int(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def make_zone(directory: str, name: str, energy_uj: int, max_range_uj: int) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "name"), "w") as f:
        f.write(name + "\n")
    write_int(os.path.join(directory, "energy_uj"), energy_uj)
    write_int(os.path.join(directory, "max_energy_range_uj"), max_range_uj)
    return directory


def make_tree(
    root: str,
    packages: Sequence[bool] = (True, False),
    *,
    energy_uj: int = 1_000_000,
    max_range_uj: int = REAL_RANGE_UJ,
) -> str:
    """One package zone per entry; True gives it a ``dram`` subzone (after a ``core`` one)."""
    for index, dram in enumerate(packages):
        package = make_zone(
            os.path.join(root, f"intel-rapl:{index}"), f"package-{index}", energy_uj, max_range_uj
        )
        make_zone(os.path.join(package, f"intel-rapl:{index}:0"), "core", 5, max_range_uj)
        if dram:
            make_zone(
                os.path.join(package, f"intel-rapl:{index}:1"), "dram", energy_uj, max_range_uj
            )
    # Real trees also hold non-RAPL entries; they must be ignored.
    os.makedirs(os.path.join(root, "intel-rapl"), exist_ok=True)
    return root


def package_energy(root: str, cpu: int) -> str:
    return os.path.join(root, f"intel-rapl:{cpu}", "energy_uj")


def dram_energy(root: str, cpu: int) -> str:
    return os.path.join(root, f"intel-rapl:{cpu}", f"intel-rapl:{cpu}:1", "energy_uj")
