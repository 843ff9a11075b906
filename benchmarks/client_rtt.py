"""What the Python client and the Zeus backend add to a ``gpu.get_power_limit`` round trip.

Starts the real ``zeusd`` (simulated GPUs, no added latency). Baseline: a bare socket that
writes the request line and reads the reply line. Measured against it in the same run, in
alternating rounds so machine noise hits all alike: ``ZeusdClient.get_power_limit`` and,
if Zeus is installed, Zeus's ``get_power_management_limit`` through ``zeusd.zeus_backend``.
Prints medians (microseconds) and the median of per-round ratios to the baseline.

Usage: .venv/bin/python benchmarks/client_rtt.py [--calls 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable

from suite import zeusd

from zeusd.client import ZeusdClient

REQUEST = b'{"jsonrpc":"2.0","method":"gpu.get_power_limit","params":{"gpu_ids":[0]},"id":1}\n'


def _median_us(call: Callable[[], object], calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="zd-bench-") as directory,
        zeusd(directory) as (
            _,
            path,
        ),
    ):
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(path)
        reader = raw.makefile("rb")

        def bare() -> None:
            raw.sendall(REQUEST)
            reader.readline()

        client = ZeusdClient(path)
        contenders: dict[str, Callable[[], object]] = {
            "ZeusdClient.get_power_limit": lambda: client.get_power_limit([0]),
        }
        try:
            import zeusd.zeus_backend as backend

            os.environ["ZEUSD_SOCK_PATH"] = path
            gpus = backend.install()
            contenders["Zeus get_power_management_limit"] = lambda: gpus.get_power_management_limit(
                0
            )
        except ImportError:
            print("zeus is not installed: skipping the Zeus backend")
        for call in [bare, *contenders.values()]:
            _median_us(call, 50)  # warm up
        medians: dict[str, list[float]] = {"bare socket": []}
        ratios: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            base = _median_us(bare, args.calls)
            medians["bare socket"].append(base)
            for name, call in contenders.items():
                value = _median_us(call, args.calls)
                medians.setdefault(name, []).append(value)
                ratios[name].append(value / base)
        print(f"{args.rounds} rounds x {args.calls} calls, median round trip:")
        for name, values in medians.items():
            line = f"  {name:34s} {statistics.median(values):8.1f} us"
            if name in ratios:
                line += f"   x{statistics.median(ratios[name]):.2f} of bare socket"
            print(line)
        client.close()
        reader.close()
        raw.close()


if __name__ == "__main__":
    main()
