"""At start-up, before the first connection: act on the restore records a daemon that did
not exit cleanly left in ``--state-dir`` (see zeusd.gpu.records and PROTOCOL section 8)."""

from __future__ import annotations

import logging

from zeusd.core.audit import record_start_restore
from zeusd.gpu.backend import NvmlCallError
from zeusd.gpu.device import GpuBackend
from zeusd.gpu.ledger import from_record_value, restore_setting
from zeusd.gpu.records import Record, RecordStore, boot_id

log = logging.getLogger(__name__)


def recover(store: RecordStore, backend: GpuBackend) -> int:
    """Restore what is marked to be restored, keep the rest; leave no record behind but
    those that could not be acted on (moved aside); return how many settings were put back.
    Blocks (NVML): run it in a thread."""
    records = store.load()
    if not records:
        return 0
    log.warning(
        "%s holds %d restore record(s): the last daemon did not exit cleanly",
        store.path,
        len(records),
    )
    uuids = [info.uuid for info in backend.infos]
    this_boot = boot_id()
    restored = 0
    for record in records:
        if record.boot_id and this_boot and record.boot_id != this_boot:
            log.info(
                "GPU %d: %s record is from an earlier boot (the GPU was reset since): dropped",
                record.gpu,
                record.setting,
            )
            store.remove(record.gpu, record.setting)
            continue
        if record.uuid not in uuids:
            store.set_aside(record.name, f"GPU {record.uuid or '?'} is not on this node")
            continue
        restored += _act(store, backend, uuids.index(record.uuid), record)
    return restored


def _act(store: RecordStore, backend: GpuBackend, gpu: int, record: Record) -> int:
    """Act on one record; 1 if a setting was put back, else 0."""
    if not record.restore:
        log.info(
            "GPU %d: %s kept as %s left it (%s)",
            gpu,
            record.setting,
            record.changed_by,
            record.reason,
        )
        store.remove(record.gpu, record.setting)
        return 0
    value = from_record_value(record.before)
    try:
        restore_setting(backend.devices[gpu], record.setting, value)
    except NvmlCallError as exc:
        log.warning("GPU %d: restoring %s to %r failed: %s", gpu, record.setting, value, exc)
        record_start_restore(gpu, record.setting, record.before, record.changed_by, exc.detail())
        store.set_aside(record.name, f"restoring it failed: {exc}")
        return 0
    log.info(
        "GPU %d: %s restored to %r (%s of %s; the last daemon did not exit cleanly)",
        gpu,
        record.setting,
        value,
        record.reason,
        record.changed_by,
    )
    record_start_restore(gpu, record.setting, record.before, record.changed_by, None)
    store.remove(record.gpu, record.setting)
    return 1
