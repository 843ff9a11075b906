"""Logging a failure that repeats (refused connections, an unreadable RAPL counter) without
flooding the log: the first failure of a run at once, then counted, not logged, until the
run ends; one line then says how many there were. A run that goes on is reported again,
with its count so far, every ``report_every_s``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: How often a run of failures that does not end is reported again.
REPORT_EVERY_S = 300.0


class FailureRun:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        report_every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._every = report_every_s
        self._clock = clock
        self._count = 0
        self._reported = 0
        self._started = 0.0
        self._last_report = 0.0
        self._last = ""

    @property
    def count(self) -> int:
        """Failures in the current run (0: none is going on)."""
        return self._count

    def failed(self, detail: str) -> None:
        now = self._clock()
        self._count += 1
        self._last = detail
        if self._count == 1:
            self._started = self._last_report = now
            self._reported = 1
            self._log.warning(
                "%s: %s (repeats are counted, not logged, until it works again)",
                self._what,
                detail,
            )
        elif now - self._last_report >= self._every:
            self._last_report = now
            self._reported = self._count
            self._log.warning(
                "%s: still failing, %d times in %.0f s so far; the last: %s",
                self._what,
                self._count,
                now - self._started,
                detail,
            )

    def succeeded(self) -> None:
        """The run (if any) is over: one line with its count, unless that says nothing new."""
        if self._count > self._reported:
            self._log.warning(
                "%s: failed %d times in a row over %.0f s, now works again; the last: %s",
                self._what,
                self._count,
                self._clock() - self._started,
                self._last,
            )
        self._count = self._reported = 0
