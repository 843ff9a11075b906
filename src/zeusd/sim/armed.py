"""What an armed call on a simulated GPU goes through, for either vendor: latency, hold, fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from zeusd.sim.config import SimGpuSpec


class ArmedCalls:
    """A simulated GPU's latency, hold and faults; a base of both vendors' device classes.

    Tests may change ``latency_s``, ``hold`` and ``faults`` on a running simulation.
    """

    def __init__(self, spec: SimGpuSpec, functions: Mapping[str, tuple[str, ...]]) -> None:
        self.latency_s = spec.latency_ms / 1000
        #: When set to an unset Event, every armed call on this GPU blocks until it is set.
        self.hold: threading.Event | None = None
        #: Fault key -> the vendor's error name, as in SimGpuSpec.faults.
        self.faults: dict[str, str] = dict(spec.faults)
        self._functions = functions

    def armed_call(self, function: str) -> str | None:
        """Wait as the GPU is told to, then give the error *function* fails with, or None.

        Call it outside any lock: a slow or held GPU must not block calls to the others.
        """
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        hold = self.hold
        if hold is not None:
            hold.wait()
        # A key naming only this function beats a composite key that also names it.
        matches = [
            (len(self._functions[key]), error)
            for key, error in self.faults.items()
            if function in self._functions[key]
        ]
        return min(matches)[1] if matches else None
