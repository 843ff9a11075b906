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


class Histogram:
    """Observations per bucket (the last one is +Inf) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # The first bound at or above the value: Prometheus buckets are "less or equal".
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` per bucket, ending with ``+Inf``."""
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, count in zip((*map(str, BUCKETS_S), "+Inf"), self.counts, strict=True):
            seen += count
            buckets.append((bound, seen))
        return buckets


class Tally:
    """Counts, by the labels the metrics carry. One per daemon."""

    def __init__(self, restores: int = 0) -> None:
        #: (method, code) -> calls.
        self.requests: dict[tuple[str, int], int] = {}
        #: method -> durations.
        self.durations: dict[str, Histogram] = {}
        #: dialect -> connections open now.
        self.connections = {JSONRPC: 0, HTTP: 0}
        #: (gpu, method) -> writes applied.
        self.writes: dict[tuple[int, str], int] = {}
        # Restores happen in lane threads, several GPUs at once.
        self._restores = restores
        self._lock = threading.Lock()

    # -- Observer --------------------------------------------------------------------------

    def call_finished(self, method: str, code: int, seconds: float) -> None:
        key = (method, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(method)
        if histogram is None:
            histogram = self.durations[method] = Histogram()
        histogram.observe(seconds)

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
