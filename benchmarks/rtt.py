"""Round-trip time of one ``gpu.get_power_limit`` over the Unix socket, against the echo floor.

Starts the real ``zeusd`` (simulated GPUs, no added latency) and the echo floor of
``floors.py`` (one ``trio.to_thread.run_sync`` hop of a no-op per line), each in its own
process. Rounds alternate between the two so that machine noise hits both alike; the ratio is
the median of per-round ratios. ``suite.py`` measures this and every other target.

Usage: .venv/bin/python benchmarks/rtt.py [--calls 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from suite import floor, line_rtts, quantile, zeusd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    zeusd_all: list[float] = []
    echo_all: list[float] = []
    ratios = []
    with (
        tempfile.TemporaryDirectory(prefix="zd-bench-") as directory,
        zeusd(directory) as (_, zeusd_path),
        floor(directory, "echo") as (_, echo_path),
    ):
        line_rtts(zeusd_path, 200)  # warm-up: imports, caches, thread pool
        line_rtts(echo_path, 200)
        for _ in range(args.rounds):
            z = line_rtts(zeusd_path, args.calls)
            e = line_rtts(echo_path, args.calls)
            zeusd_all += z
            echo_all += e
            ratios.append(statistics.median(z) / statistics.median(e))

    print(f"gpu.get_power_limit over UDS, {args.rounds} rounds x {args.calls} calls")
    for name, samples in (("zeusd", zeusd_all), ("echo floor", echo_all)):
        print(
            f"  {name:<11} median {quantile(samples, 0.5) * 1e6:7.1f} us"
            f"   p90 {quantile(samples, 0.9) * 1e6:7.1f} us"
            f"   p99 {quantile(samples, 0.99) * 1e6:7.1f} us"
        )
    print(
        f"  ratio zeusd/echo floor (median of per-round medians): {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
