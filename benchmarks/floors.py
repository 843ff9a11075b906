"""Baseline servers the benchmark compares zeusd against, each run as its own process.

- ``echo PATH``: a bare trio server on a Unix socket that answers each line after one
  ``trio.to_thread.run_sync`` hop of a no-op: the least a trio daemon that does its blocking
  NVML calls in threads can cost.
- ``echo-concurrent PATH``: the echo floor, but each line gets its own task (hop, then the
  reply under a send lock), as the contract requires of zeusd: a request is never held up
  by an earlier, slower one of the same connection. Not a target; it shows what that
  concurrency costs by itself.
- ``http PATH``: a bare trio HTTP/1.1 server on a Unix socket that answers every request with
  an empty 200 (keep-alive): the server side of Zeus's own httpx-over-UDS path, doing nothing.
- ``http-body PATH``: the same, answering with the fixed bytes of zeusd's ``GET /time``
  response (content type, length and a JSON body). Not a target: it shows what reading a
  real response costs the client by itself.

Both print ``ready`` on stdout once listening.
"""

from __future__ import annotations

import contextlib
import socket
import sys

import trio

HTTP_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
#: What zeusd answers to ``GET /time``, as fixed bytes: the same response for the client to
#: read (a head of three fields and a JSON body), made at no cost.
HTTP_BODY_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n"
    b'{"timestamp_ms":1764700000000}'
)


async def _echo(stream: trio.SocketStream) -> None:
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            await trio.to_thread.run_sync(lambda: None)
            await stream.send_all(line + b"\n")


async def _echo_concurrent(stream: trio.SocketStream) -> None:
    lock = trio.Lock()

    async def answer(line: bytes) -> None:
        await trio.to_thread.run_sync(lambda: None)
        async with lock:
            await stream.send_all(line + b"\n")

    buffer = b""
    async with trio.open_nursery() as nursery:
        while data := await stream.receive_some(65536):
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                nursery.start_soon(answer, line)


async def _http(stream: trio.SocketStream, reply: bytes = HTTP_REPLY) -> None:
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        while b"\r\n\r\n" in buffer:
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                more = await stream.receive_some(65536)
                if not more:
                    return
                buffer += more
            buffer = buffer[length:]
            await stream.send_all(reply)


async def _http_body(stream: trio.SocketStream) -> None:
    await _http(stream, HTTP_BODY_REPLY)


async def _serve(kind: str, path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(1024)
    print("ready", flush=True)
    handlers = {
        "echo": _echo,
        "echo-concurrent": _echo_concurrent,
        "http": _http,
        "http-body": _http_body,
    }
    handler = handlers[kind]

    async def guarded(stream: trio.SocketStream) -> None:
        # A client hanging up mid-reply must not bring the whole server down.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await handler(stream)

    await trio.serve_listeners(guarded, [trio.SocketListener(sock)])


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    if kind not in ("echo", "echo-concurrent", "http", "http-body"):
        raise SystemExit("usage: floors.py {echo,echo-concurrent,http,http-body} PATH")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, kind, path)
