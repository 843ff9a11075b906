"""Round-trip time of one ``gpu.get_power_limit`` over the Unix socket, against an echo floor.

Starts the real ``zeusd`` (simulated GPUs, no added latency) and, as the floor, the bare trio
echo server of ``floors.py`` (one ``trio.to_thread.run_sync`` hop of a no-op per line), each in
its own process. Rounds alternate between the
two so that machine noise hits both alike; the ratio is the median of per-round ratios.

Usage: .venv/bin/python benchmarks/rtt.py [--calls 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REQUEST = b'{"jsonrpc":"2.0","method":"gpu.get_power_limit","params":{"gpu_ids":[0]},"id":1}\n'


def _echo_floor(path: str) -> subprocess.Popen[str]:
    # Its own process, like zeusd: a floor sharing the client's interpreter would be slowed
    # by the client and flatter the ratio.
    floors = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floors.py")
    proc = subprocess.Popen(
        [sys.executable, floors, "echo", path], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if "ready" not in proc.stdout.readline():
        raise SystemExit(f"echo floor did not start (exit {proc.wait()})")
    return proc


def _start_zeusd(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeusd", "--gpu-backend", "sim", "--socket-path", path],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            return proc
    raise SystemExit(f"zeusd did not start (exit {proc.wait()})")


def _round(path: str, calls: int) -> list[float]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            sock.sendall(REQUEST)
            reader.readline()
            samples.append(time.perf_counter() - start)
        reader.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="zd-bench-")
    zeusd_path = os.path.join(directory, "zeusd.sock")
    echo_path = os.path.join(directory, "echo.sock")
    floor = _echo_floor(echo_path)
    proc = _start_zeusd(zeusd_path)
    try:
        _round(zeusd_path, 200)  # warm-up: imports, caches, thread pool
        _round(echo_path, 200)
        zeusd_all: list[float] = []
        echo_all: list[float] = []
        ratios = []
        for _ in range(args.rounds):
            z = _round(zeusd_path, args.calls)
            e = _round(echo_path, args.calls)
            zeusd_all += z
            echo_all += e
            ratios.append(statistics.median(z) / statistics.median(e))
    finally:
        for p in (proc, floor):
            p.terminate()
            p.wait()

    def us(samples: list[float], q: float) -> float:
        return sorted(samples)[int(q * (len(samples) - 1))] * 1e6

    print(f"gpu.get_power_limit over UDS, {args.rounds} rounds x {args.calls} calls")
    for name, samples in (("zeusd", zeusd_all), ("echo floor", echo_all)):
        print(
            f"  {name:<11} median {us(samples, 0.5):7.1f} us   p90 {us(samples, 0.9):7.1f} us"
            f"   p99 {us(samples, 0.99):7.1f} us"
        )
    print(
        f"  ratio zeusd/echo floor (median of per-round medians): {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
