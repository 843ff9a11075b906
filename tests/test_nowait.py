"""send_nowait: bytes handed to a socket at once, what a full one takes, and gone peers."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from zeusd.server.nowait import send_nowait, socket_of


async def _pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_a_small_write_is_taken_whole() -> None:
    """A reply that fits the socket's buffer is written at once, all of it."""
    stream, theirs = await _pair()
    with theirs:
        assert send_nowait(socket_of(stream), b"hello\n") == 6
        assert theirs.recv(100) == b"hello\n"
        await stream.aclose()


async def test_a_full_socket_takes_part_then_nothing() -> None:
    """A client that does not read: the socket takes what fits, then 0, never blocking."""
    stream, theirs = await _pair()
    with theirs:
        data = b"x" * (8 << 20)
        taken = send_nowait(socket_of(stream), data)
        assert 0 < taken < len(data)
        assert send_nowait(socket_of(stream), data) == 0
        await stream.aclose()


async def test_gone_and_closed_raise_trio_errors() -> None:
    """A peer that left is BrokenResourceError; a closed socket is never written to."""
    stream, theirs = await _pair()
    theirs.close()
    with pytest.raises(trio.BrokenResourceError):
        send_nowait(socket_of(stream), b"x")
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        send_nowait(socket_of(stream), b"x")


def test_streams_without_a_socket_take_nothing() -> None:
    """A stream that is not a socket (a test's memory stream) gets its bytes the waiting way."""
    ours, _ = trio.testing.memory_stream_pair()
    assert socket_of(ours) is None
    assert send_nowait(None, b"x") == 0
