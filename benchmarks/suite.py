"""zeusd's speed targets, each measured against a floor taken in the same run.

Run: .venv/bin/python benchmarks/suite.py   (about 2-3 minutes; --quick for a smoke run)

Every figure is printed with its target and its ratio. The daemon runs on simulated GPUs,
so NVML itself costs nothing unless a latency is configured; what is measured is zeusd.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import streaming
import trio

HERE = Path(__file__).resolve().parent
GET_LIMIT = b'{"jsonrpc":"2.0","method":"gpu.get_power_limit","params":{"gpu_ids":[%d]},"id":1}\n'


# --- processes ------------------------------------------------------------------------


class Proc:
    def __init__(self, argv: Sequence[str], ready: str, stream: str) -> None:
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        pipe = self.popen.stdout if stream == "stdout" else self.popen.stderr
        assert pipe is not None
        for line in pipe:
            if ready in line:
                break
        else:
            raise SystemExit(f"{argv} did not start: {self.popen.wait()}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@contextlib.contextmanager
def zeusd(directory: str, *args: str, name: str = "zeusd.sock") -> Iterator[tuple[Proc, str]]:
    path = os.path.join(directory, name)
    state = os.path.join(directory, f"{name}.state")
    argv = [sys.executable, "-m", "zeusd", "--gpu-backend", "sim", "--socket-path", path]
    argv += ["--state-dir", state, *args]
    proc = Proc(argv, "listening on", "stderr")
    try:
        yield proc, path
    finally:
        proc.stop()


@contextlib.contextmanager
def floor(directory: str, kind: str) -> Iterator[tuple[Proc, str]]:
    path = os.path.join(directory, f"{kind}.sock")
    proc = Proc([sys.executable, str(HERE / "floors.py"), kind, path], "ready", "stdout")
    try:
        yield proc, path
    finally:
        proc.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sim_config(directory: str, name: str, gpus: Sequence[str]) -> str:
    path = os.path.join(directory, name)
    Path(path).write_text("".join(f"[[gpu]]\n{body}\n" for body in gpus))
    return path


# --- clients --------------------------------------------------------------------------


def line_rtts(path: str, calls: int, request: bytes = GET_LIMIT % 0) -> list[float]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            sock.sendall(request)
            reader.readline()
            samples.append(time.perf_counter() - start)
        reader.close()
    return samples


def http_rtts(path: str, calls: int) -> list[float]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=path)) as client:
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            client.get("http://zeusd/gpu/0/power_limit")
            samples.append(time.perf_counter() - start)
    return samples


def pipelined_throughput(path: str, connections: int, seconds: float, window: int = 8) -> float:
    """Requests per second with *connections* clients each keeping *window* in flight."""

    async def client(index: int, counts: list[int], deadline: float) -> None:
        stream = await trio.open_unix_socket(path)
        request = GET_LIMIT % (index % 4)
        async with stream:
            await stream.send_all(request * window)
            pending = b""
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                pending += data
                done = pending.count(b"\n")
                if done:
                    pending = pending[pending.rindex(b"\n") + 1 :]
                    counts[0] += done
                    if trio.current_time() >= deadline:
                        return
                    await stream.send_all(request * done)

    async def main() -> float:
        counts = [0]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(client, i, counts, start + seconds)
        return counts[0] / (trio.current_time() - start)

    return trio.run(main)


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- report ---------------------------------------------------------------------------

results: list[tuple[str, str, str, bool]] = []


def report(name: str, figure: str, target: str, met: bool) -> None:
    results.append((name, figure, target, met))
    print(f"  {'MET ' if met else 'MISS'} {name}: {figure}   (target {target})", flush=True)


# --- targets --------------------------------------------------------------------------


def target_round_trip(directory: str, rounds: int, calls: int) -> None:
    print("1. gpu.get_power_limit round trip over UDS, rounds alternating with the floors")
    kinds = ("zeusd", "echo", "echo-concurrent", "http")
    with (
        zeusd(directory) as (_, zpath),
        floor(directory, "echo") as (_, epath),
        floor(directory, "echo-concurrent") as (_, cpath),
        floor(directory, "http") as (_, hpath),
    ):
        measure = {
            "zeusd": lambda n: line_rtts(zpath, n),
            "echo": lambda n: line_rtts(epath, n),
            "echo-concurrent": lambda n: line_rtts(cpath, n),
            "http": lambda n: http_rtts(hpath, n),
        }
        for kind in kinds:
            measure[kind](300)  # warm-up
        rounds_of: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind in kinds:
                rounds_of[kind].append(statistics.median(measure[kind](calls)))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rounds_of[a], rounds_of[b], strict=True))

    us = {kind: statistics.median(values) * 1e6 for kind, values in rounds_of.items()}
    print(
        f"     medians: zeusd {us['zeusd']:.0f} us, echo floor {us['echo']:.0f} us,"
        f" concurrent echo {us['echo-concurrent']:.0f} us, HTTP floor {us['http']:.0f} us"
    )
    print(
        f"     (not a target) concurrent echo / echo floor {ratio('echo-concurrent', 'echo'):.2f}x,"
        f" zeusd / concurrent echo {ratio('zeusd', 'echo-concurrent'):.2f}x"
    )
    r_echo, r_http = ratio("zeusd", "echo"), ratio("zeusd", "http")
    report("zeusd / echo floor", f"{r_echo:.2f}x", "<= 1.3x", r_echo <= 1.3)
    report("zeusd / HTTP floor", f"{r_http:.2f}x", "<= 0.5x", r_http <= 0.5)


def target_throughput(directory: str, seconds: float) -> None:
    print("2. 32 connections pipelining reads (8 in flight each)")
    with zeusd(directory) as (_, zpath), floor(directory, "echo") as (_, epath):
        pipelined_throughput(zpath, 32, 0.5), pipelined_throughput(epath, 32, 0.5)
        z = [pipelined_throughput(zpath, 32, seconds) for _ in range(3)]
        e = [pipelined_throughput(epath, 32, seconds) for _ in range(3)]
    zm, em = statistics.median(z), statistics.median(e)
    print(f"     zeusd {zm:,.0f} req/s, echo floor {em:,.0f} req/s")
    report("throughput zeusd / echo floor", f"{zm / em:.2f}x", ">= 1.0x", zm / em >= 1.0)


def target_slow_gpu(directory: str, calls: int) -> None:
    print("3. reads of GPU 1 while GPU 0's calls take 2 s")
    config = sim_config(directory, "slow.toml", ["latency_ms = 2000", ""])
    with zeusd(directory, "--sim-config", config) as (_, path):
        line_rtts(path, 200, GET_LIMIT % 1)
        base = line_rtts(path, calls, GET_LIMIT % 1)
        with socket.socket(socket.AF_UNIX) as hog:
            hog.connect(path)
            hog.sendall(GET_LIMIT % 0 * 50)  # 100 s of queued work on GPU 0
            time.sleep(0.2)
            slow = line_rtts(path, calls, GET_LIMIT % 1)
    b99, s99 = quantile(base, 0.99), quantile(slow, 0.99)
    print(f"     p99 without the slow GPU {b99 * 1e6:.0f} us, with it {s99 * 1e6:.0f} us")
    report("p99 with slow GPU / without", f"{s99 / b99:.2f}x", "<= 1.5x", s99 / b99 <= 1.5)


def target_fan_out(directory: str, writes: int) -> None:
    print("4. one write to 8 GPUs with 20 ms NVML latency each")
    config = sim_config(directory, "fan.toml", ["latency_ms = 20"] * 8)
    request = (
        b'{"jsonrpc":"2.0","method":"gpu.set_power_limit",'
        b'"params":{"gpu_ids":[0,1,2,3,4,5,6,7],"power_limit_mw":300000},"id":1}\n'
    )
    for label, extra in (("--num-workers 8", ["--num-workers", "8"]), ("default workers", [])):
        with zeusd(directory, "--sim-config", config, *extra) as (_, path):
            line_rtts(path, 3, request)
            median = statistics.median(line_rtts(path, writes, request))
        met = median <= 0.030
        report(f"fan-out, {label}", f"{median * 1e3:.1f} ms", "<= 30 ms", met)


def target_idle(directory: str, idle_seconds: float) -> None:
    print("5. idle connections")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    with zeusd(directory) as (proc, path):
        base = proc.rss_mb()
        socks = []
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
        with socket.socket(socket.AF_UNIX) as probe:  # all 1000 accepted and served
            probe.connect(path)
            probe.sendall(GET_LIMIT % 0)
            probe.recv(4096)
        rss = proc.rss_mb()
        for s in socks[100:]:
            s.close()
        del socks[100:]
        time.sleep(0.5)
        before = proc.cpu_seconds()
        time.sleep(idle_seconds)
        cpu = proc.cpu_seconds() - before
        for s in socks:
            s.close()
    print(f"     RSS {base:.1f} MB at start, {rss:.1f} MB with 1000 idle connections")
    report("RSS with 1000 idle connections", f"{rss:.1f} MB", "<= 60 MB", rss <= 60)
    report(
        f"CPU, 100 idle connections for {idle_seconds:.0f} s",
        f"{cpu:.3f} s",
        "<= 0.05 s",
        cpu <= 0.05,
    )


def target_start(directory: str, runs: int) -> None:
    print("6. start to accepting connections")
    samples = []
    for n in range(runs):
        path = os.path.join(directory, f"start{n}.sock")
        start = time.perf_counter()
        popen = subprocess.Popen(
            [sys.executable, "-m", "zeusd", "--gpu-backend", "sim", "--socket-path", path],
            stderr=subprocess.DEVNULL,
        )
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.002)
        samples.append(time.perf_counter() - start)
        popen.terminate()
        popen.wait()
    median = statistics.median(samples)
    report("start to accepting (median)", f"{median:.3f} s", "<= 0.5 s", median <= 0.5)


def target_streaming(directory: str, rounds: int, seconds: float) -> None:
    print(
        f"7. streaming {streaming.GPUS} GPUs at {streaming.INTERVAL_MS} ms"
        f" to {streaming.SUBSCRIBERS} subscribers"
    )
    os.makedirs(os.path.join(directory, "streaming"))
    proc, path = streaming.start_zeusd(os.path.join(directory, "streaming"))
    try:
        shares, rates = [], []
        for _ in range(rounds):
            cpu, _, received = trio.run(streaming.stream_round, path, proc.pid, seconds)
            shares.append(100 * cpu / seconds)
            rates.append(received / seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    share, rate = statistics.median(shares), statistics.median(rates)
    print(f"     {rate:,.0f} notifications/s delivered, {1e6 * share / 100 / rate:.0f} us each")
    report("streaming CPU (share of one core)", f"{share:.1f}%", "<= 5%", share <= 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="zeusd speed targets")
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    args = parser.parse_args()
    q = args.quick
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zd-bench-") as directory:
        target_round_trip(directory, rounds=3 if q else 7, calls=300 if q else 1000)
        target_throughput(directory, seconds=0.5 if q else 3.0)
        target_slow_gpu(directory, calls=300 if q else 1000)
        target_fan_out(directory, writes=10 if q else 40)
        target_idle(directory, idle_seconds=2.0 if q else 10.0)
        target_start(directory, runs=3 if q else 7)
        target_streaming(directory, rounds=1 if q else 3, seconds=3.0 if q else 10.0)
    met = sum(1 for r in results if r[3])
    print(f"\n{met}/{len(results)} targets met in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
