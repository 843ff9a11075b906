"""Daemon CPU time idle and while streaming power, against a bare trio process.

Starts the real ``zeusd`` with 8 simulated GPUs and a fake two-socket RAPL tree (so the
RAPL wraparound check runs as on a real node), and, as the baseline, a bare Python process
sleeping in ``trio.run`` -- the least any trio daemon costs while doing nothing. Per round:

* idle: 10 s with no client at all; CPU seconds of zeusd and of the baseline;
* streaming: 100 connections each subscribe to all 8 GPUs at 50 ms and read every line for
  10 s; CPU seconds of zeusd, and of this benchmark's own client side for comparison.

CPU time is utime + stime from /proc/<pid>/stat. Prints per-round figures and medians.

Usage: .venv/bin/python benchmarks/streaming.py [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import trio

GPUS = 8
SUBSCRIBERS = 100
INTERVAL_MS = 50
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return (int(fields[11]) + int(fields[12])) / TICK


def fake_rapl(root: str) -> None:
    for cpu in range(2):
        for sub, name in [("", f"package-{cpu}"), (f"/intel-rapl:{cpu}:0", "dram")]:
            zone = f"{root}/intel-rapl:{cpu}{sub}"
            os.makedirs(zone, exist_ok=True)
            for file, value in [
                ("name", name),
                ("energy_uj", "1000"),
                ("max_energy_range_uj", "262143328850"),
            ]:
                with open(f"{zone}/{file}", "w") as f:
                    f.write(value + "\n")


def start_zeusd(directory: str) -> tuple[subprocess.Popen[str], str]:
    path = os.path.join(directory, "zeusd.sock")
    root = os.path.join(directory, "powercap")
    fake_rapl(root)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zeusd",
            "--gpu-backend",
            "sim",
            "--sim-gpus",
            str(GPUS),
            "--socket-path",
            path,
            "--rapl-root",
            root,
            "--state-dir",
            os.path.join(directory, "state"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            if "cpu-read" not in line:
                raise SystemExit(f"zeusd did not enable cpu-read: {line}")
            return proc, path
    raise SystemExit(f"zeusd did not start (exit {proc.wait()})")


async def subscriber(
    path: str, counts: list[int], index: int, ready: trio.Event, stop: trio.Event
) -> None:
    stream = await trio.open_unix_socket(path)
    async with stream:
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "gpu.subscribe_power",
            "params": {"interval_ms": INTERVAL_MS},
        }
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buffer = b""
        answered = False
        with trio.move_on_at(trio.current_time() + 3600) as scope:

            async def cancel_on_stop() -> None:
                await stop.wait()
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_stop)
                while data := await stream.receive_some(65536):
                    buffer += data
                    *complete, buffer = buffer.split(b"\n")
                    for line in complete:
                        if not answered:
                            assert json.loads(line)["id"] == 1, line
                            answered = True
                            ready.set()
                        else:
                            counts[index] += 1


async def stream_round(path: str, pid: int, seconds: float) -> tuple[float, float, int]:
    counts = [0] * SUBSCRIBERS
    stop = trio.Event()
    readies = [trio.Event() for _ in range(SUBSCRIBERS)]
    async with trio.open_nursery() as nursery:
        for i in range(SUBSCRIBERS):
            nursery.start_soon(subscriber, path, counts, i, readies[i], stop)
        for ready in readies:
            await ready.wait()
        await trio.sleep(0.5)  # let every stream settle
        start_counts = sum(counts)
        daemon0, client0 = cpu_seconds(pid), time.process_time()
        await trio.sleep(seconds)
        daemon1, client1 = cpu_seconds(pid), time.process_time()
        received = sum(counts) - start_counts
        stop.set()
    return daemon1 - daemon0, client1 - client0, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as directory:
        zeusd, path = start_zeusd(directory)
        bare = subprocess.Popen([sys.executable, "-c", "import trio; trio.run(trio.sleep_forever)"])
        try:
            time.sleep(1.0)  # both past their imports
            idle, base, streaming, client, rates = [], [], [], [], []
            for n in range(args.rounds):
                d0, b0 = cpu_seconds(zeusd.pid), cpu_seconds(bare.pid)
                time.sleep(args.seconds)
                idle.append(cpu_seconds(zeusd.pid) - d0)
                base.append(cpu_seconds(bare.pid) - b0)
                d, c, received = trio.run(stream_round, path, zeusd.pid, args.seconds)
                streaming.append(d)
                client.append(c)
                rates.append(received / args.seconds)
                time.sleep(1.0)  # the daemon closes 100 connections: not idle time
                print(
                    f"round {n + 1}: idle zeusd {idle[-1]:.3f} s, bare trio {base[-1]:.3f} s; "
                    f"streaming zeusd {d:.2f} s, client side {c:.2f} s, "
                    f"{received / args.seconds:.0f} notifications/s",
                    flush=True,
                )
        finally:
            bare.kill()
            zeusd.terminate()
            zeusd.wait(timeout=30)
    expected = SUBSCRIBERS * 1000 / INTERVAL_MS
    med = statistics.median
    print(f"\nmedians over {args.rounds} rounds of {args.seconds:.0f} s each:")
    print(
        f"  idle:      zeusd {med(idle):.3f} CPU s  (bare trio process {med(base):.3f} CPU s;"
        f" the kernel counts in steps of {1 / TICK:.3f} s)"
    )
    share = 100 * med(streaming) / args.seconds
    print(
        f"  streaming: zeusd {med(streaming):.2f} CPU s = {share:.0f}%"
        f" of a core, {1e6 * med(streaming) / (med(rates) * args.seconds):.0f} us per"
        f" notification; client side {med(client):.2f} CPU s"
        f" (ratio zeusd/client {med(streaming) / med(client):.2f})"
    )
    print(
        f"  delivered {med(rates):.0f} notifications/s of {expected:.0f} asked for"
        f" ({GPUS} GPUs each, {SUBSCRIBERS} subscribers at {INTERVAL_MS} ms)"
    )


if __name__ == "__main__":
    main()
