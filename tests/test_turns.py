"""Turns at line handling: users share the loop fairly, whatever their number of connections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd import tokens
from zeusd.core.session import Session
from zeusd.server.turns import SLICE_S, Turns, user_of
from zeusd.sim import default_sim_gpus

KEY = b"0123456789abcdef0123456789abcdef"


def test_users_are_uids_then_token_subjects_then_anonymous() -> None:
    """A Unix peer is its uid (tokens or not); a TCP client its token's subject, or nobody."""
    assert user_of(Session(transport="uds", uid=1000, subject="x")) == ("uid", 1000)
    assert user_of(Session(transport="tcp", subject="x")) == ("subject", "x")
    assert user_of(Session(transport="tcp")) == user_of(Session(transport="tcp"))
    assert user_of(Session(transport="tcp")) != user_of(Session(transport="tcp", subject="x"))


async def test_a_user_takes_a_turn_only_once_its_slice_is_spent() -> None:
    """Below SLICE_S a user never waits; beyond it, a turn is due, and the turn renews it."""
    turns = Turns()
    turns.charge("a", SLICE_S / 2)
    assert not turns.due("a")
    turns.charge("a", SLICE_S / 2)
    assert turns.due("a")
    assert not turns.due("b")
    await turns.take("a")
    assert not turns.due("a")


async def test_turns_go_round_the_users_not_the_connections() -> None:
    """Three waiters of user A and one of B: B's turn comes before A's second one."""
    turns = Turns()
    order: list[str] = []

    async def take(name: str) -> None:
        await turns.take(name[0])
        order.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("a1", "a2", "a3", "b1"):
            nursery.start_soon(take, name)
    # Whichever ran first took the free turn; the others queued in the order they ran.
    assert sorted(order) == ["a1", "a2", "a3", "b1"]
    assert order.index("b1") <= 2


async def test_a_cancelled_waiter_loses_nobody_a_turn() -> None:
    """A waiter cancelled before its turn leaves the queue; the next user still gets one."""
    turns = Turns()
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        cancelled = trio.CancelScope()

        async def quitter() -> None:
            with cancelled:
                await turns.take("q")
                order.append("q")

        async def patient() -> None:
            await turns.take("p")
            order.append("p")

        async def first() -> None:
            await turns.take("f")  # takes the free turn; the others queue meanwhile
            cancelled.cancel()
            order.append("f")

        nursery.start_soon(first)
        nursery.start_soon(quitter)
        nursery.start_soon(patient)
    assert "p" in order
    assert order.count("q") <= 1  # it may have had its turn before the cancel came


# -- a read flood against the in-process daemon ------------------------------------------


@pytest.fixture
async def tcp_daemon(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[SimDaemon]:
    daemon = await start_sim_daemon(
        nursery, default_sim_gpus(2), sock_dir, mode="tcp", tcp_port=0, token_key=KEY
    )
    yield daemon
    daemon.running.server.stop(force=True)


async def _client(daemon: SimDaemon, subject: str, scopes: list[str]) -> LineClient:
    port = int(daemon.running.address.rsplit(":", 1)[1])
    client = LineClient(await trio.open_tcp_stream("127.0.0.1", port))
    token = tokens.issue(KEY, subject, scopes, 3600)
    assert "result" in await client.call("session.authenticate", {"token": token})
    return client


def _limits(reply: Any) -> list[int]:
    """The power limits the members of a batch reply of gpu.get_power_limit reads saw."""
    return [member["result"]["0"]["power_limit_mw"] for member in sorted(reply, key=_id)]


def _id(member: Any) -> int:
    return int(member["id"])


async def test_another_users_write_is_read_while_a_flood_of_batches_is_parsed(
    tcp_daemon: SimDaemon,
) -> None:
    """Eight connections of one user pour 32 batches of 256 reads of GPU 0; another user's
    write to GPU 0, sent once the first batch is answered, is read before most of the flood:
    the reads after it see the new limit, each connection's in the order it sent them."""
    flooders = [await _client(tcp_daemon, "flood", ["gpu-read"]) for _ in range(8)]
    ops = await _client(tcp_daemon, "ops", ["gpu-read", "gpu-control"])
    batch = [
        {"jsonrpc": "2.0", "method": "gpu.get_power_limit", "params": {"gpu_ids": [0]}, "id": n}
        for n in range(256)
    ]
    line = json.dumps(batch).encode() + b"\n"
    per_connection = 4  # 1024 reads each: the per-connection queue cap
    try:
        async with trio.open_nursery() as nursery:
            for flooder in flooders:
                nursery.start_soon(flooder.send_raw, line * per_connection)
            first = await flooders[0].read(timeout=30)
            assert set(_limits(first)) == {700_000}
            write = {"gpu_ids": [0], "power_limit_mw": 500_000}
            assert (await ops.result("gpu.set_power_limit", write)) == {"applied": [0]}
        seen = [_limits(first)] + [[] for _ in flooders[1:]]
        for flooder, limits in zip(flooders, seen, strict=True):
            while len(limits) < per_connection * len(batch):
                limits += _limits(await flooder.read(timeout=30))
    finally:
        for client in (*flooders, ops):
            await client.aclose()
    for limits in seen:
        # In the order each connection sent them: the old limit, then (once the write was
        # read, maybe in the middle of a batch) the new one.
        assert limits == sorted(limits, reverse=True)
        assert set(limits) <= {700_000, 500_000}
    # The write was read before most of the flood, not after all of it.
    after = sum(limits.count(500_000) for limits in seen)
    assert after >= len(flooders) * per_connection * len(batch) // 2
