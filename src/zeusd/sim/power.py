"""The simulated GPUs' power draw: the one model both simulated vendors share."""

from __future__ import annotations

import math

IDLE_MW = 70_000.0
LOAD_PERIOD_S = 20.0


def mean_power_mw(index: int, limit_mw: float, t0: float, t1: float) -> float:
    """Mean draw over [t0, t1] of GPU *index* under *limit_mw* (t0 == t1: the instant's).

    Load swings between 55% and 95% of the headroom above idle, so the draw stays below
    the limit and scales with it. The mean of the sine is in closed form, which keeps the
    energy integral exact however the reads are spaced.
    """
    half = math.pi * (t1 - t0) / LOAD_PERIOD_S
    sinc = math.sin(half) / half if half else 1.0
    phase = math.pi * (t0 + t1) / LOAD_PERIOD_S + index
    load = 0.75 + 0.2 * math.sin(phase) * sinc
    return min(limit_mw, IDLE_MW + max(0.0, limit_mw - IDLE_MW) * load)
