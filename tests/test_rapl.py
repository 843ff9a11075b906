"""RAPL over fake powercap trees: discovery, wraparound, unreadable files, CPU tables."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import trio

from fake_rapl import dram_energy, make_tree, make_zone, package_energy, write_int
from zeusd.core.cpus import CpuTable
from zeusd.core.errors import DeviceError, InvalidParamsError
from zeusd.core.omitted import OMITTED
from zeusd.cpu.rapl import (
    MAX_WRAP_CHECK_S,
    MIN_WRAP_CHECK_S,
    RAPL_READ_FAILED,
    EnergyCounter,
    RaplUnavailableError,
    open_rapl,
    power_mw,
    wrap_check_period_s,
)
from zeusd.stream.sources import CpuPowerSource


def test_one_cpu_per_package_with_dram_where_present(tmp_path: str) -> None:
    """Each intel-rapl:N is a CPU; its subzone named dram (not core) is its DRAM."""
    root = make_tree(str(tmp_path), [True, False])
    cpus = open_rapl(root)
    assert [cpu.describe() for cpu in cpus] == [
        {"id": 0, "dram_available": True},
        {"id": 1, "dram_available": False},
    ]
    assert cpus[0].dram is not None
    assert cpus[0].dram.path == dram_energy(root, 0)


def test_missing_tree_names_the_path(tmp_path: str) -> None:
    """A root that does not exist is unavailable, and the message says where it looked."""
    missing = os.path.join(str(tmp_path), "nope")
    with pytest.raises(RaplUnavailableError, match=r"no RAPL powercap tree at .*nope"):
        open_rapl(missing)


def test_tree_without_packages_is_unavailable(tmp_path: str) -> None:
    """A powercap tree with no intel-rapl:N zone cannot serve cpu-read."""
    os.makedirs(os.path.join(str(tmp_path), "dtpm"))
    with pytest.raises(RaplUnavailableError, match="no RAPL package zones"):
        open_rapl(str(tmp_path))


@pytest.mark.parametrize("broken", ["missing", "garbage", "directory", "zero-range"])
def test_unreadable_zone_is_a_clear_startup_error(tmp_path: str, broken: str) -> None:
    """A zone whose files cannot be read gives an error naming the zone and the reason."""
    root = make_tree(str(tmp_path), [False])
    energy = package_energy(root, 0)
    if broken == "missing":
        os.remove(energy)
    elif broken == "garbage":
        with open(energy, "w") as f:
            f.write("lots\n")
    elif broken == "directory":
        os.remove(energy)
        os.mkdir(energy)
    else:
        write_int(os.path.join(root, "intel-rapl:0", "max_energy_range_uj"), 0)
    with pytest.raises(RaplUnavailableError, match=r"intel-rapl:0 is unusable: .*intel-rapl:0"):
        open_rapl(root)


def test_energy_is_monotonic_across_wraparound(tmp_path: str) -> None:
    """A counter that goes backwards has wrapped: the range is added, never subtracted."""
    zone = make_zone(str(tmp_path), "package-0", 900, 1000)
    counter = EnergyCounter.open(zone)
    path = os.path.join(zone, "energy_uj")
    readings = []
    for raw in (950, 20, 500, 990, 10):  # wraps after 950 and after 990
        write_int(path, raw)
        readings.append(counter.read())
    assert readings == [950, 1020, 1500, 1990, 2010]


def test_first_reading_is_the_raw_counter(tmp_path: str) -> None:
    """cpu_energy_uj starts at the raw counter value the daemon first read."""
    zone = make_zone(str(tmp_path), "package-0", 123_456, 1_000_000)
    assert EnergyCounter.open(zone).read() == 123_456


def test_wrap_check_period_follows_the_smallest_range(tmp_path: str) -> None:
    """Real ranges give the 60 s ceiling; tiny ranges are clamped to the floor."""
    real = open_rapl(make_tree(os.path.join(str(tmp_path), "a"), [True]))
    assert wrap_check_period_s(real) == MAX_WRAP_CHECK_S
    # 20 J at 1000 W lasts 20 ms: half of it is below the floor.
    tiny = open_rapl(make_tree(os.path.join(str(tmp_path), "b"), [True], max_range_uj=20_000_000))
    assert wrap_check_period_s(tiny) == MIN_WRAP_CHECK_S
    middle = open_rapl(
        make_tree(
            os.path.join(str(tmp_path), "c"), [False], energy_uj=1, max_range_uj=20_000_000_000
        )
    )
    assert wrap_check_period_s(middle) == pytest.approx(10.0)


async def test_wrap_tracker_reads_often_enough_to_catch_wraps(
    tmp_path: str, autojump_clock: trio.abc.Clock
) -> None:
    """The tracker's periodic reads see each wrap even when no client asks in between."""
    root = make_tree(str(tmp_path), [False], energy_uj=0, max_range_uj=20_000_000)
    table = CpuTable(open_rapl(root))
    path = package_energy(root, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(table.track_wraps)
        raw = 0
        for _ in range(10):  # ten full wraps, each seen by the tracker
            for step in (15_000_000, 10_000_000):  # +15 J, then +10 J (wrapping)
                raw = (raw + step) % 20_000_000
                write_int(path, raw)
                await trio.sleep(MIN_WRAP_CHECK_S * 1.5)
        nursery.cancel_scope.cancel()
    total = table.cumulative_energy(table.cpus, cpu=True, dram=False)["0"]["cpu_energy_uj"]
    assert total == 10 * 25_000_000


def test_cpu_ids_are_checked_like_gpu_ids(tmp_path: str) -> None:
    """Unknown, duplicate, non-integer and empty cpu_ids are -32602 naming cpu_ids."""
    table = CpuTable(open_rapl(make_tree(str(tmp_path), [True, True])))
    assert [c.id for c in table.resolve(OMITTED)] == [0, 1]
    assert [c.id for c in table.resolve([1])] == [1]
    for bad, reason in [
        ([2], "unknown CPU 2"),
        ([0, 0], "listed twice"),
        ([True], "integer CPU ids"),
        ([0.0], "integer CPU ids"),
        ([], "must not be empty"),
        ("0", "must be a list"),
    ]:
        with pytest.raises(InvalidParamsError, match=reason) as info:
            table.resolve(bad)
        assert info.value.param == "cpu_ids"


def test_cumulative_energy_honours_cpu_and_dram_flags(tmp_path: str) -> None:
    """Unasked zones and missing DRAM zones are null."""
    table = CpuTable(open_rapl(make_tree(str(tmp_path), [True, False], energy_uj=777)))
    assert table.cumulative_energy(table.cpus, cpu=True, dram=True) == {
        "0": {"cpu_energy_uj": 777, "dram_energy_uj": 777},
        "1": {"cpu_energy_uj": 777, "dram_energy_uj": None},
    }
    assert table.cumulative_energy(table.cpus, cpu=False, dram=True)["0"] == {
        "cpu_energy_uj": None,
        "dram_energy_uj": 777,
    }


def test_a_failed_read_fails_the_whole_request_with_each_reason(tmp_path: str) -> None:
    """A zone that vanished after start-up is a DeviceError naming that CPU, not a crash."""
    root = make_tree(str(tmp_path), [True, True])
    table = CpuTable(open_rapl(root))
    os.remove(dram_energy(root, 1))
    with pytest.raises(DeviceError) as info:
        table.cumulative_energy(table.cpus, cpu=True, dram=True)
    data = info.value.data
    assert data["succeeded"] == [0]
    assert list(data["errors"]) == ["1"]
    assert data["errors"]["1"]["nvml_error"] == RAPL_READ_FAILED
    assert "energy_uj" in data["errors"]["1"]["message"]


def test_power_is_energy_over_time() -> None:
    """1 J over 0.5 s is 2 W."""
    assert power_mw(1_000_000, 0.5) == 2000
    assert power_mw(5, 0) == 0


def test_streamed_cpu_power_comes_from_two_readings(
    tmp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sample only sets the baseline; the next is energy delta over time delta."""
    root = make_tree(str(tmp_path), [True], energy_uj=0)
    source = CpuPowerSource(open_rapl(root))
    clock = iter([100.0, 100.5])
    monkeypatch.setattr("zeusd.stream.sources.time.monotonic", lambda: next(clock))
    source.start(0)
    first = source.submit(0).result
    assert first is not None
    assert first.unwrap() is None
    write_int(package_energy(root, 0), 50_000_000)  # 50 J in 0.5 s: 100 W
    write_int(dram_energy(root, 0), 5_000_000)  # 5 J: 10 W
    second = source.submit(0).result
    assert second is not None
    assert second.unwrap() == {"cpu_mw": 100_000, "dram_mw": 10_000}


async def test_get_power_measures_over_a_window(tmp_path: str) -> None:
    """cpu.get_power reports about the rate at which the counters grow."""
    root = make_tree(str(tmp_path), [False], energy_uj=0)
    table = CpuTable(open_rapl(root))

    async def burn() -> None:  # 1 J every 10 ms: 100 W
        raw = 0
        while True:
            await trio.sleep(0.01)
            raw += 1_000_000
            write_int(package_energy(root, 0), raw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burn)
        result = await table.power(table.cpus)
        nursery.cancel_scope.cancel()
    reading = result["power_mw"]["0"]
    assert reading["dram_mw"] is None
    # Wide margins: timer granularity on a busy machine, not precision, is being allowed for.
    assert 30_000 <= reading["cpu_mw"] <= 250_000


def test_failing_wrap_checks_log_one_line_per_run(tmp_path: str, caplog: Any) -> None:
    """A counter that keeps failing the wrap check is logged once, then once more with the
    count when it reads again; a new run of failures is logged again."""
    caplog.set_level(logging.WARNING, logger="zeusd")
    root = make_tree(str(tmp_path), [False])
    table = CpuTable(open_rapl(root))
    energy = package_energy(root, 0)
    os.rename(energy, energy + ".away")
    for _ in range(50):
        table.read_every_counter()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "repeats are counted" in lines[0]
    os.rename(energy + ".away", energy)
    table.read_every_counter()
    table.read_every_counter()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "failed 50 times in a row" in lines[1]
    os.rename(energy, energy + ".away")
    table.read_every_counter()
    assert len(caplog.records) == 3
