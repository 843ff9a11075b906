"""--max-connections: hung-up clients do not count, and refusals are logged once per run."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from conftest import SimDaemon, start_sim_daemon
from process_helpers import LineConnection, running_daemon, short_tempdir
from zeusd.sim import default_sim_gpus


@pytest.fixture
async def limited(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[SimDaemon]:
    running = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, max_connections=2)
    yield running
    running.running.server.stop(force=True)


async def test_probe_close_reconnect_at_the_limit(limited: SimDaemon) -> None:
    """At the limit, a client that connects, hangs up and reconnects at once is served."""
    held = await limited.connect()
    await held.result("time")
    for _ in range(20):
        probe = await limited.connect()
        with trio.fail_after(5):
            while len(limited.running.server._connections) < 2:
                await trio.sleep(0.001)
        await probe.aclose()
        again = await limited.connect()
        assert await again.result("time")
        await again.aclose()
    await held.aclose()


async def test_half_closed_client_with_a_request_still_counts(limited: SimDaemon) -> None:
    """A client that sent a request and shut down its sending side is not taken for gone:
    it gets its reply."""
    held = await limited.connect()
    await held.result("time")
    waiting = await limited.connect()
    await waiting.send_raw(b'{"jsonrpc":"2.0","method":"time","id":7}\n')
    await waiting.stream.send_eof()
    response = await waiting.read()
    assert response["id"] == 7
    await waiting.aclose()
    await held.aclose()


async def test_refusals_are_one_line_per_run(limited: SimDaemon, caplog: Any) -> None:
    """Many refused connections log one line at once and one with the count at the end."""
    caplog.set_level(logging.WARNING, logger="zeusd")
    first, second = await limited.connect(), await limited.connect()
    await first.result("time")
    await second.result("time")
    for _ in range(30):
        refused = await limited.connect()
        assert await refused.read_line() in (b"",)
        await refused.aclose()
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 1
    await first.aclose()
    with trio.fail_after(5):
        while len(limited.running.server._connections) > 1:
            await trio.sleep(0.01)
    third = await limited.connect()
    await third.result("time")
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 2
    assert "failed 30 times in a row" in lines[1]
    await third.aclose()
    await second.aclose()


@pytest.mark.process
def test_probe_close_reconnect_real_process() -> None:
    """The real daemon at --max-connections 2: probe, close, reconnect is served each time."""
    path = f"{short_tempdir()}/zeusd.sock"
    with running_daemon("--max-connections", "2", socket_path=path) as daemon:
        with daemon.connect() as held:
            held.result("time")
            for _ in range(20):
                probe = socket.socket(socket.AF_UNIX)
                probe.connect(path)
                time.sleep(0.01)  # let the daemon take it in (and count it)
                probe.close()
                with LineConnection.unix(path) as again:
                    assert again.result("time")
        assert "refusing" not in daemon.log
