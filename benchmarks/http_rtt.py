"""Zeus's client path (httpx over a Unix socket) against zeusd's HTTP dialect, and against a
do-nothing HTTP server (the ``http`` floor of ``floors.py``), in one run.

The client is what Zeus 0.16 uses: one ``httpx.Client`` with ``HTTPTransport(uds=...)``,
keep-alive, the daemon found the way ``ZEUSD_SOCK_PATH`` finds it. Rounds alternate between
the daemon and the floor so that machine noise hits both alike; each ratio is the median of
per-round ratios of medians. Target: zeusd at most 1.25x the floor.

Not a target, printed to explain the gap: the same client against ``http-body``, a floor that
answers with the fixed bytes of zeusd's ``GET /time`` response, so that what reading a real
response (a content type, a JSON body) costs the client is on both sides.

Usage: .venv/bin/python benchmarks/http_rtt.py [--calls 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import httpx
from suite import floor, quantile, zeusd

#: What is timed: (label, HTTP method, path). Zeus calls these through ZeusdClient.
REQUESTS = (
    ("GET /time (no GPU)", "GET", "/time"),
    ("GET /gpu/get_power_limit (one NVML call)", "GET", "/gpu/get_power_limit?gpu_ids=0"),
    (
        "POST /gpu/set_power_limit (one NVML write)",
        "POST",
        "/gpu/set_power_limit?gpu_ids=0&power_limit_mw=300000&block=true",
    ),
)
TARGET = 1.25


def rtts(client: httpx.Client, method: str, path: str, calls: int) -> list[float]:
    url = f"http://localhost{path}"
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        response = client.request(method, url)
        samples.append(time.perf_counter() - start)
        response.raise_for_status()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="zd-bench-") as directory,
        # Writes are audited at INFO; nobody reads the daemon's stderr after start-up, so a
        # full pipe would stall it.
        zeusd(directory, "--log-level", "warning") as (_, zeusd_path),
        floor(directory, "http") as (_, floor_path),
        floor(directory, "http-body") as (_, body_path),
        httpx.Client(transport=httpx.HTTPTransport(uds=zeusd_path)) as daemon,
        httpx.Client(transport=httpx.HTTPTransport(uds=floor_path)) as nothing,
        httpx.Client(transport=httpx.HTTPTransport(uds=body_path)) as fixed,
    ):
        print(f"httpx over UDS, {args.rounds} rounds x {args.calls} requests, alternating")
        for label, method, path in REQUESTS:
            rtts(daemon, method, path, 200)  # warm-up: imports, caches, worker threads
            rtts(nothing, method, path, 200)
            rtts(fixed, method, path, 200)
            ours: list[float] = []
            floors: list[float] = []
            ratios, body_ratios = [], []
            for _ in range(args.rounds):
                z = rtts(daemon, method, path, args.calls)
                f = rtts(nothing, method, path, args.calls)
                b = rtts(fixed, method, path, args.calls)
                ours += z
                floors += f
                ratios.append(statistics.median(z) / statistics.median(f))
                body_ratios.append(statistics.median(z) / statistics.median(b))
            ratio = statistics.median(ratios)
            verdict = "met" if ratio <= TARGET else "NOT met"
            print(
                f"  {label}: zeusd median {quantile(ours, 0.5) * 1e6:.0f} us"
                f" (p90 {quantile(ours, 0.9) * 1e6:.0f}),"
                f" floor {quantile(floors, 0.5) * 1e6:.0f} us;"
                f" ratio {ratio:.2f}x (target <= {TARGET}x: {verdict});"
                f" (not a target) vs. the floor with zeusd's response bytes"
                f" {statistics.median(body_ratios):.2f}x"
            )


if __name__ == "__main__":
    main()
