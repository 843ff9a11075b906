"""What scraping ``GET /metrics`` every second costs a busy daemon, against no scrapes.

Each round starts a fresh ``zeusd`` with 8 simulated GPUs and a fake two-socket RAPL tree
(as ``streaming.py`` does), connects 100 JSON-RPC clients that each ``gpu.subscribe_power``
to all 8 GPUs at 50 ms and read every line, lets it settle, then measures the daemon's CPU
time (utime + stime from /proc) for the round's seconds:

* scraped: one keep-alive HTTP client fetches ``/metrics`` every second, as Prometheus does
  (the metrics poller runs: one lane job per GPU per second);
* plain: no scrapes, so the metrics poller never starts.

Rounds alternate (plain, scraped, plain, ...), each with its own daemon, so both see the
same machine noise. Prints per-round figures, the medians and their ratio (target: at most
1.1x), and the median scrape time.

``--subscribers 0`` shows what the metrics cost a daemon that does nothing else.

Usage: .venv/bin/python benchmarks/metrics_cost.py [--pairs 3] [--seconds 10] [--subscribers N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import trio
from streaming import GPUS, INTERVAL_MS, SUBSCRIBERS, cpu_seconds, start_zeusd, subscriber

SCRAPE_EVERY_S = 1.0


async def fetch(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One ``GET /metrics`` on a keep-alive connection; returns the body."""
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: zeusd\r\n\r\n")
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    buffer[:] = rest
    while len(buffer) < length:
        buffer += await stream.receive_some(65536)
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


async def scraper(path: str, times: list[float]) -> None:
    """Scrape every SCRAPE_EVERY_S on one keep-alive connection, until cancelled."""
    stream = await trio.open_unix_socket(path)
    buffer = bytearray()
    async with stream:
        while True:
            began = trio.current_time()
            body = await fetch(stream, buffer)
            times.append(trio.current_time() - began)
            assert body.count(b"\nzeusd_gpu_power_watts{") == GPUS, body[:2000]
            await trio.sleep_until(began + SCRAPE_EVERY_S)


async def measure(
    path: str, pid: int, seconds: float, subscribers: int, scraped: bool
) -> tuple[float, list[float]]:
    """The daemon's CPU seconds over *seconds* under *subscribers* (and scrapes)."""
    counts = [0] * subscribers
    stop = trio.Event()
    readies = [trio.Event() for _ in range(subscribers)]
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        for i in range(subscribers):
            nursery.start_soon(subscriber, path, counts, i, readies[i], stop)
        for ready in readies:
            await ready.wait()
        async with trio.open_nursery() as scrapes:
            if scraped:
                scrapes.start_soon(scraper, path, times)
            await trio.sleep(1.5)  # every stream, and the poller, settled
            before = cpu_seconds(pid)
            await trio.sleep(seconds)
            used = cpu_seconds(pid) - before
            scrapes.cancel_scope.cancel()
        stop.set()
    return used, times


def one_round(seconds: float, subscribers: int, scraped: bool) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as directory:
        zeusd, path = start_zeusd(directory)
        try:
            time.sleep(1.0)  # past its imports
            return trio.run(measure, path, zeusd.pid, seconds, subscribers, scraped)
        finally:
            zeusd.terminate()
            zeusd.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--subscribers",
        type=int,
        default=SUBSCRIBERS,
        help="power subscribers (0: what the metrics cost a daemon that does nothing else)",
    )
    args = parser.parse_args()
    plain: list[float] = []
    scraped: list[float] = []
    scrape_times: list[float] = []
    for n in range(args.pairs):
        for kind, into in (("plain", plain), ("scraped", scraped)):
            used, times = one_round(args.seconds, args.subscribers, kind == "scraped")
            into.append(used)
            scrape_times += times
            extra = f", {len(times)} scrapes" if times else ""
            print(f"pair {n + 1} {kind:>7}: zeusd {used:.2f} CPU s{extra}", flush=True)
    med = statistics.median
    print(
        f"\nmedians over {args.pairs} rounds of each kind, {args.seconds:.0f} s each"
        f" ({GPUS} GPUs, {args.subscribers} subscribers at {INTERVAL_MS} ms):"
    )
    print(f"  plain:   zeusd {med(plain):.2f} CPU s")
    print(f"  scraped: zeusd {med(scraped):.2f} CPU s (a scrape every {SCRAPE_EVERY_S:g} s)")
    added = med(scraped) - med(plain)
    print(f"  scraping costs {1e3 * added / args.seconds:.1f} ms of CPU per second")
    if med(plain) > 0:
        print(f"  ratio scraped/plain: {med(scraped) / med(plain):.3f}x (target at most 1.1x)")
    print(f"  scrape time: median {1e3 * med(scrape_times):.1f} ms")


if __name__ == "__main__":
    main()
