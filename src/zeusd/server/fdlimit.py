"""Fitting ``--max-connections`` to the process's file-descriptor limit at start-up.

Each connection holds one descriptor. If the soft ``RLIMIT_NOFILE`` is lower than what
``--max-connections`` needs, ``accept`` fails with EMFILE long before the connection limit
is reached. At start zeusd raises the soft limit to what it needs (never above the hard
limit). When even the hard limit is too low, it serves fewer connections (one warning says
how many and how to raise the limit); when not even one would fit, it refuses to start.
"""

from __future__ import annotations

import os
import resource

import attrs

#: Descriptors kept free beyond the connections and what is open at start-up: the listener,
#: trio's own, RAPL and state files opened for a moment, and a refused connection's accept.
HEADROOM = 64


class FdLimitError(Exception):
    """Not even one connection fits under the hard limit; the message says what to do."""


@attrs.frozen
class Fit:
    #: The soft limit to set (None: leave it as it is).
    soft: int | None
    #: How many connections to serve.
    max_connections: int
    #: A warning for the admin, or None.
    warning: str | None


def needed(max_connections: int, open_now: int) -> int:
    """Descriptors needed for *max_connections* on top of the *open_now* open already."""
    return open_now + max_connections + HEADROOM


def fit(max_connections: int, open_now: int, soft: int, hard: int) -> Fit:
    """What to do with limits *soft*/*hard* (``resource.RLIM_INFINITY`` allowed)."""
    need = needed(max_connections, open_now)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or soft >= need:
        return Fit(None, max_connections, None)
    if hard == unlimited or hard >= need:
        return Fit(need, max_connections, None)
    fits = hard - open_now - HEADROOM
    advice = (
        "raise the hard limit (systemd: LimitNOFILE=; shell: ulimit -Hn, as root) "
        "or lower --max-connections"
    )
    if fits < 1:
        raise FdLimitError(
            f"the file-descriptor limit ({hard}) leaves no room for connections: zeusd needs "
            f"{open_now + HEADROOM + 1} for one, {need} for --max-connections "
            f"{max_connections}; {advice}"
        )
    return Fit(
        hard if hard > soft else None,
        fits,
        f"--max-connections {max_connections} needs {need} file descriptors, but this process "
        f"may open at most {hard}: serving at most {fits} connections; {advice}",
    )


def open_descriptors() -> int:
    """How many descriptors this process has open (a guess of 16 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 16


def apply(max_connections: int) -> tuple[int, str | None]:
    """Raise the soft limit as :func:`fit` says; the connections to serve and any warning.

    Raises FdLimitError. Where the limit cannot be changed (a seccomp filter such as
    systemd's ``SystemCallFilter=~@resources``), the soft limit counts as the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = open_descriptors()
    plan = fit(max_connections, open_now, soft, hard)
    if plan.soft is None:
        return plan.max_connections, plan.warning
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
    except (OSError, ValueError):
        plan = fit(max_connections, open_now, soft, soft)
    return plan.max_connections, plan.warning
