"""Warnings a client can trigger at will, logged at most once per period."""

from __future__ import annotations

import logging

import trio


class RateLimitedReport:
    """Logs a warning at most once per *period* seconds (trio's clock), counting the rest."""

    def __init__(self, logger: logging.Logger, period: float) -> None:
        self._log = logger
        self._period = period
        self._next = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = trio.current_time()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more since the last report)"
            self._suppressed = 0
        self._log.warning(message, *args)
        self._next = now + self._period
