"""A result that arrives later, on the trio thread: awaited, or handed on to a callback.

Device work finishes in the lanes' report to the trio thread. A request whose work is one
submitted command needs no task that waits for it: the core and the front end chain their
steps (audit, the response) with :meth:`Later.then`, and the connection takes the reply
with :meth:`Later.on_done` and queues it right there, in the same report. Awaiting a Later
still works, for callers that have a task anyway (batches, HTTP).

Steps and callbacks run synchronously where the value is set, which may be inside trio's
``run_sync_soon`` queue: a step's exception becomes the next Later's error, and a callback
at the end of a chain must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")
U = TypeVar("U")


class Later(Generic[T]):
    """A value or an error, set once; until then, awaitable and chainable."""

    __slots__ = ("_callbacks", "_done", "_error", "_event", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Later[T]], None]] = []
        self._event: trio.Event | None = None

    @property
    def done(self) -> bool:
        return self._done

    def get(self) -> T:
        """The value, or raise the error; only once done."""
        assert self._done, "Later.get() before it is done"
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def resolve(self, value: T) -> None:
        self._value = value
        self._settle()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._settle()

    def _settle(self) -> None:
        assert not self._done, "a Later is set once"
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        if self._event is not None:
            self._event.set()

    def on_done(self, callback: Callable[[Later[T]], None]) -> None:
        """Call *callback* with this Later once it is done (at once if it is)."""
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def then(self, step: Callable[[Later[T]], U]) -> Later[U]:
        """A Later of what *step* makes of this one once done (its exception: the error)."""
        following: Later[U] = Later()

        def run(done: Later[T]) -> None:
            try:
                value = step(done)
            except Exception as exc:
                following.fail(exc)
                return
            following.resolve(value)

        self.on_done(run)
        return following

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            if self._event is None:
                self._event = trio.Event()
            yield from self._event.wait().__await__()
        return self.get()
