"""One log line per run of failures, with a count."""

from __future__ import annotations

import logging
from typing import Any

from zeusd.failure_runs import FailureRun

log = logging.getLogger("zeusd.test")


def test_a_long_run_is_reported_again_with_its_count(caplog: Any) -> None:
    """A run that never ends is reported again every report_every_s, with the count so far."""
    caplog.set_level(logging.WARNING, logger="zeusd")
    now = [0.0]
    run = FailureRun(log, "thing", report_every_s=60, clock=lambda: now[0])
    for _ in range(100):
        run.failed("boom")
        now[0] += 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[1].startswith("thing: still failing, 61 times in 60 s")
    run.succeeded()
    assert "failed 100 times in a row over 100 s" in caplog.records[-1].getMessage()
    assert run.count == 0


def test_a_single_failure_is_one_line(caplog: Any) -> None:
    """One failure, then success: only the failure's own line."""
    caplog.set_level(logging.WARNING, logger="zeusd")
    run = FailureRun(log, "thing")
    run.succeeded()
    run.failed("boom")
    run.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "thing: boom (repeats are counted, not logged, until it works again)"
    ]
