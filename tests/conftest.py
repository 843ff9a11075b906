"""Shared fixtures: an in-process daemon on simulated GPUs, and a raw line client."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio

from zeusd.app import Running, serve
from zeusd.config import Config
from zeusd.gpu.backend import NvmlBackend
from zeusd.sim import SimGpuSpec, SimNvml, default_sim_gpus


class LineClient:
    """Talks to a daemon the way socat would: raw lines out, raw lines in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._next_id = 0

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, message: Any) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def read_line(self, timeout: float = 5.0) -> bytes:
        """One reply line; b"" at EOF."""
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    rest, self._buffer = self._buffer, b""
                    return rest
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def read(self, timeout: float = 5.0) -> Any:
        line = await self.read_line(timeout)
        assert line, "connection closed before a reply arrived"
        return json.loads(line)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and return its whole response object."""
        self._next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params is not None:
            request["params"] = params
        await self.send(request)
        response = await self.read()
        assert response["id"] == self._next_id
        return response

    async def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = await self.call(method, params)
        assert "error" not in response, response
        return response["result"]

    async def aclose(self) -> None:
        await self.stream.aclose()


class SimDaemon:
    """An in-process daemon on a temp Unix socket, with its simulated NVML exposed."""

    def __init__(self, running: Running, sim: SimNvml, path: str) -> None:
        self.running = running
        self.sim = sim
        self.path = path

    async def connect(self) -> LineClient:
        return LineClient(await trio.open_unix_socket(self.path))


async def start_sim_daemon(
    nursery: trio.Nursery, specs: Sequence[SimGpuSpec], directory: str, **config: Any
) -> SimDaemon:
    path = os.path.join(directory, "zeusd.sock")
    sim = SimNvml(specs)
    backend = NvmlBackend.open(sim, name="sim")
    sim.arm()
    # The host's own RAPL tree must not change what the tests see.
    config.setdefault("rapl_root", os.path.join(directory, "no-powercap"))
    cfg = Config(gpu_backend="sim", socket_path=path, num_workers=4, **config)
    running = await nursery.start(lambda **kw: serve(cfg, backend, handle_signals=False, **kw))
    return SimDaemon(running, sim, path)


@pytest.fixture
def sock_dir() -> Any:
    # AF_UNIX paths are limited to ~107 bytes, so keep them short rather than under tmp_path.
    with tempfile.TemporaryDirectory(prefix="zd-") as d:
        yield d


@pytest.fixture
async def daemon(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[SimDaemon]:
    """Four default simulated GPUs behind an in-process daemon."""
    running = await start_sim_daemon(nursery, default_sim_gpus(4), sock_dir)
    yield running
    running.running.server.stop(force=True)


@pytest.fixture
async def client(daemon: SimDaemon) -> AsyncIterator[LineClient]:
    c = await daemon.connect()
    yield c
    await c.aclose()
