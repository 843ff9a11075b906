"""The daemon's own counts: calls, their durations, connections, GPU writes and restores.

:class:`Tally` is the :class:`~zeusd.core.observer.Observer` the core and the server report
to. Its methods are on every request's path, so they only touch dictionaries (a few hundred
nanoseconds); the Prometheus objects are made from them at scrape time.
"""

from __future__ import annotations

import bisect
import threading

from zeusd.core.observer import HTTP, JSONRPC

#: Upper bounds (seconds) of the request duration histogram's buckets: most calls take well
#: under a millisecond, a slow driver call seconds.
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MethodCounts:
    """One method's calls: per outcome code, and their durations per bucket (the last one
    is +Inf) with their sum."""

    __slots__ = ("buckets", "codes", "sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` per bucket, ending with ``+Inf``."""
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, count in zip((*map(str, BUCKETS_S), "+Inf"), self.buckets, strict=True):
            seen += count
            buckets.append((bound, seen))
        return buckets


class Tally:
    """Counts, by the labels the metrics carry. One per daemon."""

    def __init__(self, restores: int = 0) -> None:
        #: method -> its calls by code, and their durations.
        self.methods: dict[str, MethodCounts] = {}
        #: dialect -> connections open now.
        self.connections = {JSONRPC: 0, HTTP: 0}
        #: (gpu, method) -> writes applied.
        self.writes: dict[tuple[int, str], int] = {}
        # Restores happen in lane threads, several GPUs at once.
        self._restores = restores
        self._lock = threading.Lock()

    # -- Observer --------------------------------------------------------------------------

    def call_finished(self, method: str, code: int, seconds: float) -> None:
        # Inline (no call per count): this runs for every request.
        counts = self.methods.get(method)
        if counts is None:
            counts = self.methods[method] = MethodCounts()
        codes = counts.codes
        codes[code] = codes.get(code, 0) + 1
        # The first bound at or above the value: Prometheus buckets are "less or equal".
        counts.buckets[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        counts.sum += seconds

    def gpu_written(self, gpu: int, method: str) -> None:
        key = (gpu, method)
        self.writes[key] = self.writes.get(key, 0) + 1

    def connection_opened(self, dialect: str) -> None:
        self.connections[dialect] = self.connections.get(dialect, 0) + 1

    def connection_closed(self, dialect: str) -> None:
        self.connections[dialect] -= 1

    # -- from the settings ledger, in lane threads -------------------------------------------

    def restored(self) -> None:
        """One setting was put back (a connection closed, the daemon exiting)."""
        with self._lock:
            self._restores += 1

    @property
    def restores(self) -> int:
        with self._lock:
            return self._restores
