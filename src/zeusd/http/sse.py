"""Server-Sent Events of power samples: the stream's outbox, and each sample as events.

A stream's outbox keeps the newest unsent sample of its subscription and nothing else, as
every outbox does: a client that reads slowly gets the latest power, never a backlog.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from zeusd.stream.outbox import PowerSample

CONTENT_TYPE = "text/event-stream"


class SampleSlots:
    """An Outbox (see ``zeusd.stream.outbox``) for one HTTP stream; no I/O."""

    def __init__(self) -> None:
        self._newest: dict[str, PowerSample] = {}
        self._keys: set[str] = set()
        #: Called when a sample arrives; the connection sets it to wake its writer.
        self.on_ready: Callable[[], None] = lambda: None

    def register(self, key: str) -> None:
        self._keys.add(key)

    def put(self, key: str, sample: PowerSample) -> None:
        if key in self._keys:
            self._newest[key] = sample
            self.on_ready()

    def drop(self, key: str) -> None:
        self._keys.discard(key)
        self._newest.pop(key, None)

    def take(self) -> list[PowerSample]:
        """The unsent samples, oldest subscription first; the slots are empty after."""
        samples = list(self._newest.values())
        self._newest.clear()
        return samples


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def gpu_events(sample: PowerSample) -> bytes:
    """``data: {"timestamp_ms","gpu_id","power_mw"}``, one event per GPU."""
    return b"".join(
        _event({"timestamp_ms": sample.timestamp_ms, "gpu_id": int(gpu), "power_mw": power})
        for gpu, power in sample.power_mw.items()
    )


def cpu_events(sample: PowerSample) -> bytes:
    """``data: {"timestamp_ms","cpu_id","cpu_mw","dram_mw"}``, one event per CPU."""
    return b"".join(
        _event(
            {
                "timestamp_ms": sample.timestamp_ms,
                "cpu_id": int(cpu),
                "cpu_mw": power["cpu_mw"],
                "dram_mw": power["dram_mw"],
            }
        )
        for cpu, power in sample.power_mw.items()
    )
