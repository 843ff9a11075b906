"""The accept loop: descriptor exhaustion waits and retries, reported at most once a second."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest
import trio

from zeusd.server import accept


class FailingListener(trio.abc.Listener[Any]):
    """accept() fails with *code* *failures* times, then hands out *streams*, then waits."""

    def __init__(self, code: int, failures: float, streams: list[Any]) -> None:
        self.code = code
        self.failures = failures
        self.streams = streams
        self.calls = 0

    async def accept(self) -> Any:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.calls <= self.failures:
            raise OSError(self.code, "simulated")
        if self.streams:
            return self.streams.pop(0)
        await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == accept.log.name]


@pytest.mark.parametrize("code", sorted(accept.CAPACITY_ERRNOS))
async def test_exhaustion_is_reported_at_most_once_a_second(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    """10 s of failing accepts (100 tries): about 10 lines, none with a traceback."""
    listener = FailingListener(code, float("inf"), [])
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as handlers:
            with trio.move_on_after(10.05):
                await accept.serve_listener(listener, _never, handlers)  # type: ignore[arg-type]
    lines = _reports(caplog)
    assert listener.calls >= 90  # it kept retrying every RETRY_S
    assert 10 <= len(lines) <= 11
    assert all(errno.errorcode[code] in line for line in lines)
    assert "more since the last report" in lines[1]
    assert not [r for r in caplog.records if r.exc_info]


async def _never(stream: Any) -> None:
    raise AssertionError("no stream expected")


async def test_accepting_resumes_after_exhaustion(autojump_clock: trio.abc.Clock) -> None:
    """After the failures pass, the waiting connections are served."""
    served: list[Any] = []

    class Stream(trio.abc.Stream):
        async def send_all(self, data: Any) -> None: ...
        async def wait_send_all_might_not_block(self) -> None: ...
        async def receive_some(self, max_bytes: Any = None) -> bytes:
            return b""

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    async def handler(stream: Any) -> None:
        served.append(stream)

    streams = [Stream(), Stream()]
    listener = FailingListener(errno.EMFILE, 5, list(streams))
    async with trio.open_nursery() as handlers:
        with trio.move_on_after(5):
            await accept.serve_listener(listener, handler, handlers)  # type: ignore[arg-type]
    assert served == streams


async def test_other_accept_errors_propagate(autojump_clock: trio.abc.Clock) -> None:
    """An error that is not about capacity is not swallowed."""
    listener = FailingListener(errno.EBADF, 1, [])
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as handlers:
            await accept.serve_listener(listener, _never, handlers)  # type: ignore[arg-type]
    (error,) = raised.value.exceptions
    assert isinstance(error, OSError)
    assert error.errno == errno.EBADF
