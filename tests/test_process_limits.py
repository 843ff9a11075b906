"""The real ``zeusd`` against hostile clients: what they can make it hold, and what others feel."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from process_helpers import running_daemon, short_tempdir

ATTACK_S = 6.0
TIME = b'{"jsonrpc":"2.0","method":"time","id":1}\n'


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _discover_batch(count: int, gpu_read: bool) -> bytes:
    batch: list[dict[str, object]] = [
        {"jsonrpc": "2.0", "method": "rpc.discover", "id": i} for i in range(count)
    ]
    if gpu_read:
        batch.append({"jsonrpc": "2.0", "method": "gpu.get_power_limit", "id": "read"})
    return json.dumps(batch).encode() + b"\n"


def _pour(sock: socket.socket, line: bytes, stop: threading.Event) -> None:
    """Send *line* again and again and never read, until *stop* or the daemon hangs up."""
    sock.settimeout(0.2)
    data = memoryview(line * 4)
    sent = 0
    while not stop.is_set():
        try:
            sent += sock.send(data[sent:])
        except TimeoutError:
            continue  # the daemon stopped reading us: that is the backpressure
        except OSError:
            return
        sent %= len(data)


def _attack(
    pid: int, attackers: list[socket.socket], line: bytes, during: Callable[[], None]
) -> float:
    """Run the attackers for ATTACK_S while *during* runs; return the peak RSS growth (MB)."""
    stop = threading.Event()
    before = _rss_mb(pid)
    peak = [before]

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb(pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=_pour, args=(s, line, stop)) for s in attackers]
    threads.append(threading.Thread(target=watch))
    for thread in threads:
        thread.start()
    try:
        during()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in attackers:
            sock.close()
    return peak[0] - before


def test_client_that_never_reads_cannot_grow_the_daemon() -> None:
    """Pipelined batches of 255 rpc.discover + 1 GPU read, never read: RSS stays bounded."""
    directory = short_tempdir()
    try:
        with running_daemon(socket_path=os.path.join(directory, "z.sock")) as daemon:
            path = daemon.address.removeprefix("unix:")
            attacker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            attacker.connect(path)
            answered: list[bytes] = []

            def others() -> None:
                time.sleep(ATTACK_S)
                with daemon.connect(timeout=30) as other:
                    other.send_raw(TIME)
                    answered.append(other.read_line())

            grown = _attack(daemon.proc.pid, [attacker], _discover_batch(255, True), others)
            assert answered, "another client got no reply"
            assert b'"timestamp_ms"' in answered[0], answered
    finally:
        shutil.rmtree(directory)
    # Unbounded, this grew by hundreds of MB within the attack (38 MB -> 3.4 GB in 25 s).
    assert grown < 100, f"RSS grew by {grown:.0f} MB"


@pytest.mark.parametrize("clients", [100])
def test_unauthenticated_tcp_flood_leaves_others_served(clients: int) -> None:
    """100 unauthenticated TCP clients flooding sync batches: bounded RSS, others still answered."""
    directory = short_tempdir()
    key = Path(directory, "token.key")
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    argv = ["--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", str(key)]
    argv += ["--max-connections", str(clients + 10)]
    try:
        with running_daemon(*argv) as daemon:
            port = daemon.tcp_port
            attackers = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
            calls: list[float] = []

            def others() -> None:
                with daemon.connect(timeout=30) as other:
                    deadline = time.monotonic() + ATTACK_S
                    while time.monotonic() < deadline:
                        start = time.monotonic()
                        other.send_raw(TIME)
                        assert b'"timestamp_ms"' in other.read_line()
                        calls.append(time.monotonic() - start)

            grown = _attack(daemon.proc.pid, attackers, _discover_batch(256, False), others)
    finally:
        shutil.rmtree(directory)
    # Unbounded, 100 such clients cost over 1 GB and one `time` call took 14 s.
    assert grown < 250, f"RSS grew by {grown:.0f} MB"
    assert len(calls) >= 10, f"only {len(calls)} `time` calls answered in {ATTACK_S} s: {calls}"
