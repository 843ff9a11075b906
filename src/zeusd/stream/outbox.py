"""Where a hub delivers samples: the subscriber's outbox, and the sample it is handed.

A sample names no protocol: each front end renders it (a JSON-RPC notification line, or
Server-Sent Events) when it writes it out.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs


@attrs.frozen
class PowerSample:
    """The newest power of a subscription's devices that have a new reading."""

    #: "gpu" or "cpu".
    kind: str
    subscription: str
    timestamp_ms: int
    #: Keyed by device id as a string: GPU milliwatts, or ``{"cpu_mw", "dram_mw"}``.
    power_mw: dict[str, Any]


class Outbox(Protocol):
    """Where a connection takes server-initiated samples, keyed by subscription.

    None of these block. A key holds at most one unsent sample (the newest), so a slow
    reader costs one sample per subscription, never a growing queue.
    """

    def register(self, key: str) -> None:
        """A new subscription; its samples wait until the response that created it is out."""

    def put(self, key: str, sample: PowerSample) -> None:
        """Replace *key*'s unsent sample, if any, with *sample*."""

    def drop(self, key: str) -> None:
        """Forget *key*: its unsent sample is never written."""


class NoOutbox:
    """For sessions that cannot receive pushes: samples are discarded."""

    def register(self, key: str) -> None:
        pass

    def put(self, key: str, sample: PowerSample) -> None:
        pass

    def drop(self, key: str) -> None:
        pass
