"""Later: a result set once, awaited or handed on to callbacks, chained with then."""

from __future__ import annotations

import pytest
import trio

from zeusd.core.later import Later


def test_callbacks_run_when_set_and_at_once_after() -> None:
    """A callback added before the value runs when it is set; one added after, at once."""
    later: Later[int] = Later()
    seen: list[int] = []
    later.on_done(lambda done: seen.append(done.get()))
    assert seen == []
    assert not later.done
    later.resolve(7)
    later.on_done(lambda done: seen.append(done.get() + 1))
    assert seen == [7, 8]


def test_then_chains_values_and_errors() -> None:
    """then's step sees the value; a step's exception is the next Later's error."""
    first: Later[int] = Later()
    doubled = first.then(lambda done: done.get() * 2)

    def refuse(done: Later[int]) -> int:
        raise ValueError(f"no {done.get()}")

    refused = doubled.then(refuse)
    recovered = refused.then(lambda done: "ok" if done.done else "?")
    first.resolve(21)
    assert doubled.get() == 42
    with pytest.raises(ValueError, match="no 42"):
        refused.get()
    # A step that looks only at doneness, not at the error, is not failed by it.
    assert recovered.get() == "ok"


def test_an_error_passes_through_then_unless_handled() -> None:
    """A failed Later fails the steps that take its value, every time it is asked."""
    first: Later[int] = Later()
    following = first.then(lambda done: done.get() + 1)
    first.fail(KeyError("gone"))
    for _ in range(2):
        with pytest.raises(KeyError):
            following.get()


def test_set_twice_is_a_bug() -> None:
    """A Later is set once."""
    later: Later[int] = Later()
    later.resolve(1)
    with pytest.raises(AssertionError):
        later.resolve(2)


async def test_await_a_set_later() -> None:
    """Awaiting a Later that is set already returns its value or raises its error."""
    ready: Later[str] = Later()
    ready.resolve("now")
    assert await ready == "now"
    failed: Later[str] = Later()
    failed.fail(RuntimeError("broken"))
    with pytest.raises(RuntimeError, match="broken"):
        await failed


async def test_await_from_a_task_is_woken_by_resolve() -> None:
    """A task waiting on a Later is woken when another task sets it."""
    later: Later[int] = Later()
    got: list[int] = []

    async def wait() -> None:
        got.append(await later)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(0.01)
        assert got == []
        later.resolve(5)
    assert got == [5]
