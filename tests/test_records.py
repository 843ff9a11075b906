"""The state directory: its checks, durable records, what is set aside, and recovery."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zeusd.gpu.backend import NvmlBackend
from zeusd.gpu.records import (
    ASIDE_DIR,
    BadRecord,
    Record,
    RecordStore,
    StateDirError,
    boot_id,
    parse_record,
)
from zeusd.recovery import recover
from zeusd.sim import SimNvml, default_sim_gpus


def _record(**changes: Any) -> Record:
    fields: dict[str, Any] = {
        "gpu": 0,
        "uuid": "GPU-x",
        "setting": "power_limit",
        "restore": True,
        "before": 700_000,
        "changed_by": "pid=1 uid=1000 gid=1000",
        "reason": "restore-on-close",
        "boot_id": boot_id(),
    }
    fields.update(changes)
    return Record(**fields)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    opened = RecordStore.open(str(tmp_path / "state"))
    yield opened
    opened.close()


def test_created_private(tmp_path: Path) -> None:
    """A missing state dir is created with mode 0700."""
    path = tmp_path / "state"
    RecordStore.open(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_refused_when_others_can_write(tmp_path: Path, mode: int) -> None:
    """A state dir its group or others can write is refused, saying how to fix it."""
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(StateDirError, match=r"writable by .*chmod go-w"):
        RecordStore.open(str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_refused_when_owned_by_someone_else(tmp_path: Path) -> None:
    """A state dir owned by another uid is refused: its owner could plant records."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        RecordStore.open(str(path))


def test_refused_when_a_symlink(tmp_path: Path) -> None:
    """A symlink in place of the state dir is not followed."""
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(tmp_path / "real")
    with pytest.raises(StateDirError, match="symlink"):
        RecordStore.open(str(tmp_path / "state"))


def test_one_daemon_per_state_dir(store: RecordStore) -> None:
    """A second daemon cannot open a state dir in use."""
    with pytest.raises(StateDirError, match="in use by another zeusd"):
        RecordStore.open(store.path)


def test_put_load_remove(store: RecordStore) -> None:
    """A record written is read back the same; removed, it is gone."""
    record = _record(setting="persistence_mode", before=True, gpu=3)
    store.put(record)
    assert list(store.names()) == ["gpu3.persistence_mode.json"]
    mode = os.stat(os.path.join(store.path, record.name)).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert store.load() == [record]
    store.remove(3, "persistence_mode")
    assert store.load() == []
    store.remove(3, "persistence_mode")  # removing twice is fine


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("gpu0.power_limit.json", b"{not json", "not JSON"),
        ("gpu0.power_limit.json", b"\xff\xfe", "not JSON"),
        ("gpu0.power_limit.json", b"[]", "not a zeusd-restore-record/1"),
        ("gpu1.power_limit.json", None, "do not match its name"),
        ("gpu0.power_limit.json", {"before": "700000"}, "wrong type"),
        ("gpu0.power_limit.json", {"before": True}, "wrong type"),
        ("gpu0.power_limit.json", {"before": 2**40}, "out of range"),
        ("gpu0.power_limit.json", {"restore": 1}, "not a boolean"),
        ("gpu0.power_limit.json", {"extra": 1}, "unexpected or missing"),
        ("gpu0.gpu_locked_clocks.json", {"setting": "gpu_locked_clocks"}, "wrong type"),
        ("gpu0.fan_speed.json", None, "not a record name"),
        ("notes.txt", b"hello", "not a record name"),
    ],
)
def test_bad_records_are_refused(name: str, data: Any, why: str) -> None:
    """Anything but a well-formed record matching its file name is a BadRecord."""
    if data is None or isinstance(data, dict):
        body = json.loads(_record().to_json())
        body.update(data or {})
        data = json.dumps(body).encode()
    with pytest.raises(BadRecord, match=why):
        parse_record(name, data)


def test_garbage_is_set_aside_never_fatal(store: RecordStore, caplog: Any) -> None:
    """Corrupt records are logged and moved to set-aside/; leftovers of an unfinished write
    are removed; foreign entries are named and left alone; the good record still loads."""
    caplog.set_level(logging.INFO, logger="zeusd")
    good = _record()
    store.put(good)
    root = Path(store.path)
    (root / "gpu1.power_limit.json").write_bytes(b"\x00garbage")
    (root / "README").write_text("not ours")
    (root / "gpu2.power_limit.json").mkdir()
    (root / "gpu3.power_limit.json").symlink_to("/etc/passwd")
    (root / "gpu4.power_limit.json").write_bytes(b" " * (1 << 20))
    (root / ".tmp.gpu0.power_limit.json.123").write_bytes(b"half a rec")
    assert store.load() == [good]
    aside = sorted(name.split(".", 1)[1] for name in os.listdir(root / ASIDE_DIR))
    assert aside == [
        "gpu1.power_limit.json",
        "gpu2.power_limit.json",
        "gpu3.power_limit.json",
        "gpu4.power_limit.json",
    ]
    assert sorted(os.listdir(root)) == ["README", "gpu0.power_limit.json", "lock", ASIDE_DIR]
    assert (root / "README").read_text() == "not ours"
    assert caplog.text.count("set aside") == 4
    assert "left alone 1 entries that are not restore records ('README')" in caplog.text
    assert "unfinished write" in caplog.text
    assert store.load() == [good]  # set-aside/ is not looked into again


def test_a_shared_directory_is_left_as_it_is(store: RecordStore, caplog: Any) -> None:
    """A state dir holding others' files (a socket, a pid file, ...) keeps them all."""
    caplog.set_level(logging.INFO, logger="zeusd")
    root = Path(store.path)
    names = [f"daemon{i}.pid" for i in range(7)]
    for name in names:
        (root / name).write_text("42\n")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "zeusd.sock"))
        assert store.load() == []
    assert sorted(os.listdir(root)) == sorted([*names, "lock", "zeusd.sock"])
    assert "left alone 8 entries" in caplog.text
    assert "and 3 more" in caplog.text
    assert "set aside" not in caplog.text


def _sim_backend() -> tuple[SimNvml, NvmlBackend]:
    sim = SimNvml(default_sim_gpus(2))
    return sim, NvmlBackend.open(sim, name="sim")


def test_recovery_restores_marked_and_keeps_the_rest(store: RecordStore, caplog: Any) -> None:
    """At start: restore-marked records are restored, logged and audited; others kept; none
    is left behind."""
    caplog.set_level(logging.INFO, logger="zeusd")
    sim, backend = _sim_backend()
    uuids = [info.uuid for info in backend.infos]
    sim.devices[0].power_limit_mw = 300_000
    sim.devices[1].power_limit_mw = 250_000
    sim.devices[1].persistence_mode = 1
    sim.devices[0].gpu_locked_clocks = (900, 1200)
    store.put(_record(uuid=uuids[0], before=650_000))
    store.put(_record(uuid=uuids[1], gpu=1, restore=False, before=700_000, reason="kept"))
    store.put(_record(uuid=uuids[1], gpu=1, setting="persistence_mode", before=False))
    store.put(_record(uuid=uuids[0], setting="gpu_locked_clocks", before=None))
    assert recover(store, backend) == 3  # put back, for zeusd_restores_total
    devices = sim.devices
    assert devices[0].power_limit_mw == 650_000
    assert devices[1].power_limit_mw == 250_000
    assert devices[1].persistence_mode == 0
    assert devices[0].gpu_locked_clocks is None
    assert list(store.names()) == []
    audits = [r.audit for r in caplog.records if r.name == "zeusd.audit"]
    assert sorted((a["params"]["gpu_id"], a["params"]["setting"], a["status"]) for a in audits) == [
        (0, "gpu_locked_clocks", "ok"),
        (0, "power_limit", "ok"),
        (1, "persistence_mode", "ok"),
    ]
    assert "kept as pid=1 uid=1000 gid=1000 left it" in caplog.text


def test_recovery_follows_the_uuid_and_sets_aside_strangers(store: RecordStore) -> None:
    """A record names its GPU by UUID: a GPU now at another index is still found; a GPU not
    on this node has its record set aside."""
    sim, backend = _sim_backend()
    sim.devices[1].power_limit_mw = 300_000
    store.put(_record(uuid=backend.infos[1].uuid, gpu=0, before=700_000))
    store.put(_record(uuid="GPU-gone", gpu=1, before=700_000))
    recover(store, backend)
    assert sim.devices[1].power_limit_mw == 700_000
    assert list(store.names()) == []
    assert [n.split(".", 1)[1] for n in os.listdir(Path(store.path) / ASIDE_DIR)] == [
        "gpu1.power_limit.json"
    ]


def test_recovery_drops_records_from_an_earlier_boot(store: RecordStore) -> None:
    """A record from another boot is dropped: the reboot reset the GPU already."""
    sim, backend = _sim_backend()
    sim.devices[0].power_limit_mw = 300_000
    store.put(_record(uuid=backend.infos[0].uuid, boot_id="another-boot"))
    recover(store, backend)
    assert sim.devices[0].power_limit_mw == 300_000
    assert list(store.names()) == []


def test_a_failed_restore_is_audited_and_set_aside(store: RecordStore, caplog: Any) -> None:
    """A restore NVML refuses is logged, audited as failed, and its record set aside."""
    caplog.set_level(logging.INFO, logger="zeusd")
    sim, backend = _sim_backend()
    sim.devices[0].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    sim.arm()
    store.put(_record(uuid=backend.infos[0].uuid))
    assert recover(store, backend) == 0
    audits = [r.audit for r in caplog.records if r.name == "zeusd.audit"]
    assert [a["status"] for a in audits] == ["device error"]
    assert audits[0]["gpus"]["0"]["nvml_error"] == "NVML_ERROR_NO_PERMISSION"
    assert list(store.names()) == []
    assert len(os.listdir(Path(store.path) / ASIDE_DIR)) == 1
