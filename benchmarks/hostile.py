"""What hostile clients cost the daemon and everyone else: memory and others' latency.

Scenarios (each starts its own ``zeusd`` on simulated GPUs):

- ``memory``: one Unix-socket client that never reads pipelines batches of 255
  ``rpc.discover`` + 1 ``gpu.get_power_limit`` for ``--seconds``; prints the daemon's RSS
  before and its peak during the attack.
- ``flood``: ``--clients`` unauthenticated TCP clients (``--token-key``) that never read
  pipeline batches of 256 ``rpc.discover``; prints peak RSS and a reading client's ``time``
  latencies (median, max) during the attack.
- ``subs``: one connection creates ``--subs`` subscriptions (pipelined, 1 s interval) and
  then closes; prints how long creating and closing took and another client's
  ``gpu.get_power_limit`` latencies meanwhile. Use ``--extra`` to raise the daemon's caps.

Usage: .venv/bin/python benchmarks/hostile.py memory|flood|subs [options]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from suite import GET_LIMIT, Proc, zeusd

TIME = b'{"jsonrpc":"2.0","method":"time","id":1}\n'


def discover_batch(count: int, gpu_read: bool) -> bytes:
    batch = [{"jsonrpc": "2.0", "method": "rpc.discover", "id": i} for i in range(count)]
    if gpu_read:
        batch.append({"jsonrpc": "2.0", "method": "gpu.get_power_limit", "id": "read"})
    return json.dumps(batch).encode() + b"\n"


def pour(sock: socket.socket, line: bytes, stop: threading.Event) -> None:
    """Send *line* over and over, never reading, until *stop* (or the daemon hangs up)."""
    sock.settimeout(0.2)
    view = memoryview(line * 8)
    sent = 0
    while not stop.is_set():
        try:
            sent += sock.send(view[sent:])
        except TimeoutError:
            continue  # backpressure: the daemon is not reading us
        except OSError:
            return
        if sent == len(view):
            sent = 0


def probe(connect: socket.socket, request: bytes, stop: threading.Event) -> list[float]:
    """Round trips of *request* on a well-behaved connection until *stop*."""
    rtts: list[float] = []
    reader = connect.makefile("rb")
    connect.settimeout(60)
    while not stop.is_set():
        start = time.perf_counter()
        connect.sendall(request)
        if not reader.readline():
            break
        rtts.append(time.perf_counter() - start)
        time.sleep(0.01)
    return rtts


def watch_rss(proc: Proc, stop: threading.Event, peak: list[float]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], proc.rss_mb())
        except (OSError, RuntimeError):
            return
        time.sleep(0.1)


def unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def summary(name: str, rtts: list[float]) -> str:
    if not rtts:
        return f"{name}: no round trip completed"
    ms = sorted(r * 1000 for r in rtts)
    return f"{name}: {len(ms)} calls, median {statistics.median(ms):.2f} ms, max {ms[-1]:.1f} ms"


def attack(
    proc: Proc,
    attackers: list[socket.socket],
    line: bytes,
    probe_sock: socket.socket,
    probe_request: bytes,
    seconds: float,
) -> None:
    stop = threading.Event()
    peak = [proc.rss_mb()]
    print(f"RSS before: {peak[0]:.0f} MB")
    threads = [threading.Thread(target=pour, args=(s, line, stop)) for s in attackers]
    threads.append(threading.Thread(target=watch_rss, args=(proc, stop, peak)))
    result: list[list[float]] = []
    threads.append(
        threading.Thread(target=lambda: result.append(probe(probe_sock, probe_request, stop)))
    )
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    print(f"RSS peak during {seconds:g} s: {peak[0]:.0f} MB")
    print(summary("others' calls", result[0] if result else []))


def scenario_memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as d, zeusd(d, *args.extra) as (p, path):
        attackers = [unix(path) for _ in range(args.clients)]
        attack(p, attackers, discover_batch(255, True), unix(path), TIME, args.seconds)


def scenario_flood(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as d:
        key = Path(d, "token.key")
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        argv = ["--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--token-key", str(key)]
        argv += ["--max-connections", str(args.clients + 10), *args.extra]
        p = Proc(
            [sys.executable, "-m", "zeusd", "--gpu-backend", "sim", *argv], "listening on", "stderr"
        )
        try:
            port = tcp_port(p)
            attackers = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.clients)]
            good = socket.create_connection(("127.0.0.1", port))
            attack(p, attackers, discover_batch(256, False), good, TIME, args.seconds)
        finally:
            p.stop()


def tcp_port(proc: Proc) -> int:
    """The port of the daemon's TCP listener (it was started on port 0)."""
    inodes = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")}
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:  # 0A: LISTEN
            return int(fields[1].split(":")[1], 16)
    raise RuntimeError("no listening TCP socket found")


def scenario_subs(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as d, zeusd(d, *args.extra) as (_, path):
        stop = threading.Event()
        samples: list[tuple[float, float]] = []  # (when it ended, round trip)
        other = unix(path)

        def timed_probe() -> None:
            reader = other.makefile("rb")
            while not stop.is_set():
                start = time.perf_counter()
                other.sendall(GET_LIMIT % 0)
                reader.readline()
                samples.append((time.perf_counter(), time.perf_counter() - start))
                time.sleep(0.01)

        prober = threading.Thread(target=timed_probe)
        prober.start()
        hog = unix(path)
        hog.settimeout(300)
        reader = hog.makefile("rb")
        started = time.perf_counter()
        request = {
            "jsonrpc": "2.0",
            "method": "gpu.subscribe_power",
            "params": {"interval_ms": 1000},
        }
        payload = b"".join(
            json.dumps({**request, "id": i}).encode() + b"\n" for i in range(args.subs)
        )
        sender = threading.Thread(target=hog.sendall, args=(payload,))
        sender.start()
        answered = refused = 0
        while answered + refused < args.subs:
            line = reader.readline()
            if not line:
                break
            message = json.loads(line)
            if "id" in message:
                answered += "result" in message
                refused += "error" in message
        sender.join()
        created = time.perf_counter()
        time.sleep(2.0)  # the subscriptions stream meanwhile
        streamed = time.perf_counter()
        hog.close()
        time.sleep(3.0)
        stop.set()
        prober.join()
        print(f"{answered} subscriptions created, {refused} refused, in {created - started:.2f} s")

        def phase(name: str, lo: float, hi: float) -> None:
            print(
                summary(
                    f"others' gpu.get_power_limit {name}", [r for t, r in samples if lo <= t < hi]
                )
            )

        phase("while subscribing", started, created)
        phase("while they stream (2 s)", created, streamed)
        phase("after the close (3 s)", streamed, math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["memory", "flood", "subs"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--subs", type=int, default=12800)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="daemon flags")
    args = parser.parse_args()
    if args.scenario == "memory":
        args.clients = args.clients or 1
        scenario_memory(args)
    elif args.scenario == "flood":
        args.clients = args.clients or 100
        scenario_flood(args)
    else:
        scenario_subs(args)


if __name__ == "__main__":
    main()
