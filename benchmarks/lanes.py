"""Lane targets: fewer threads than GPUs, and a write during another user's read flood.

1. Alternating ``gpu.get_power_limit`` reads over 2 GPUs with ``--num-workers 1`` against the
   same with ``--num-workers 2`` (target: at most 1.5x). Both daemons run side by side and
   the rounds alternate between them; the ratio is the median of per-round ratios.
2. Root's ``gpu.set_power_limit`` on GPU 0 while another user (uid 65534 when run as root)
   keeps 72 batches of 256 ``gpu.get_power_limit`` reads of GPU 0 in flight, from 18
   connections of 4 batches each (the per-connection queue cap is 1024), reading every
   reply; against the same write with no flood (target: at most 5x). Rounds alternate
   between flood and quiet; each GPU call takes ``--latency-ms`` (default 2 ms, standing in
   for the driver; 0 measures the daemon alone).

Usage: .venv/bin/python benchmarks/lanes.py [--rounds 5] [--calls 500] [--latency-ms 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from multiprocessing.connection import Connection

from suite import GET_LIMIT, Proc, sim_config, zeusd

WRITE = (
    b'{"jsonrpc":"2.0","method":"gpu.set_power_limit",'
    b'"params":{"gpu_ids":[0],"power_limit_mw":%d},"id":"w"}\n'
)
FLOOD_CONNECTIONS, FLOOD_DEPTH, BATCH = 18, 4, 256


def alternating_rtts(path: str, calls: int) -> list[float]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        samples = []
        for n in range(calls):
            start = time.perf_counter()
            sock.sendall(GET_LIMIT % (n % 2))
            reader.readline()
            samples.append(time.perf_counter() - start)
        reader.close()
    return samples


def target_few_threads(directory: str, rounds: int, calls: int) -> float:
    print("1. alternating reads of 2 GPUs: --num-workers 1 against --num-workers 2")
    two_gpus = ("--sim-gpus", "2")
    with (
        zeusd(directory, *two_gpus, "--num-workers", "1", name="one.sock") as (_, one),
        zeusd(directory, *two_gpus, "--num-workers", "2", name="two.sock") as (_, two),
    ):
        alternating_rtts(one, 200), alternating_rtts(two, 200)  # warm-up
        ratios: list[float] = []
        medians: dict[str, list[float]] = {"1": [], "2": []}
        for _ in range(rounds):
            m1 = statistics.median(alternating_rtts(one, calls))
            m2 = statistics.median(alternating_rtts(two, calls))
            medians["1"].append(m1)
            medians["2"].append(m2)
            ratios.append(m1 / m2)
    ratio = statistics.median(ratios)
    print(
        f"     medians: 1 worker {statistics.median(medians['1']) * 1e6:.0f} us,"
        f" 2 workers {statistics.median(medians['2']) * 1e6:.0f} us"
    )
    print(
        f"  {'MET ' if ratio <= 1.5 else 'MISS'} 1 worker / 2 workers:"
        f" {ratio:.2f}x (target <= 1.5x)"
    )
    return ratio


def flood_client(path: str) -> None:
    """Keep FLOOD_DEPTH batches in flight on each of FLOOD_CONNECTIONS connections."""
    import trio

    batch = (
        json.dumps(
            [
                {
                    "jsonrpc": "2.0",
                    "method": "gpu.get_power_limit",
                    "params": {"gpu_ids": [0]},
                    "id": i,
                }
                for i in range(BATCH)
            ],
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )

    async def one() -> None:
        stream = await trio.open_unix_socket(path)
        await stream.send_all(batch * FLOOD_DEPTH)
        pending = b""
        while data := await stream.receive_some(1 << 20):
            pending += data
            done = pending.count(b"\n")
            if done:
                pending = pending[pending.rindex(b"\n") + 1 :]
                await stream.send_all(batch * done)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(FLOOD_CONNECTIONS):
                nursery.start_soon(one)

    trio.run(main)


def _flood_as_other(path: str, ready: Connection) -> None:
    if os.geteuid() == 0:  # forked, not exec'd: the interpreter may be unreadable to nobody
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    ready.send(os.geteuid())
    flood_client(path)


def start_flood(path: str) -> multiprocessing.process.BaseProcess:
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    proc = context.Process(target=_flood_as_other, args=(path, theirs), daemon=True)
    proc.start()
    uid = ours.recv()
    assert uid != 0 or os.geteuid() != 0, "the flood must not run as root"
    time.sleep(1.0)  # let the flood reach its depth
    return proc


def write_times(path: str, writes: int) -> list[float]:
    samples = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        for n in range(writes):
            start = time.perf_counter()
            sock.sendall(WRITE % (300_000 + 1000 * (n % 2)))
            reply = json.loads(reader.readline())
            samples.append(time.perf_counter() - start)
            assert "result" in reply, reply
        reader.close()
    return samples


def settle(proc: Proc, timeout: float = 60.0) -> None:
    """Wait until *proc* uses under a tenth of a CPU (what a flood left is worked off)."""
    deadline = time.monotonic() + timeout
    before = proc.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = proc.cpu_seconds()
        if now - before < 0.025:
            return
        before = now


def target_flood(directory: str, rounds: int, writes: int, latency_ms: float) -> float:
    print(
        f"2. root's write on GPU 0 during a read flood by another user ({latency_ms:g} ms per call)"
    )
    config = sim_config(directory, "flood.toml", [f"latency_ms = {latency_ms}", ""])
    with zeusd(directory, "--sim-config", config, name="flood.sock") as (proc, path):
        os.chmod(path, 0o666)
        write_times(path, 5)
        quiet, flooded, ratios = [], [], []
        for _ in range(rounds):
            q = statistics.median(write_times(path, writes))
            flood = start_flood(path)
            try:
                f = statistics.median(write_times(path, writes))
            finally:
                flood.kill()
                flood.join()
            settle(proc)  # the daemon works off what the flood left, so quiet is quiet
            quiet.append(q)
            flooded.append(f)
            ratios.append(f / q)
    ratio = statistics.median(ratios)
    print(
        f"     median write: quiet {statistics.median(quiet) * 1e3:.2f} ms,"
        f" during the flood {statistics.median(flooded) * 1e3:.2f} ms"
    )
    print(f"  {'MET ' if ratio <= 5 else 'MISS'} flood / quiet: {ratio:.2f}x (target <= 5x)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500, help="reads per round (target 1)")
    parser.add_argument("--writes", type=int, default=20, help="writes per round (target 2)")
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--only", choices=("threads", "flood"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as directory:
        os.chmod(directory, 0o755)  # the flooding user must reach the socket
        if args.only != "flood":
            target_few_threads(directory, args.rounds, args.calls)
        if args.only != "threads":
            target_flood(directory, args.rounds, args.writes, args.latency_ms)


if __name__ == "__main__":
    main()
