"""What a durable restore record costs a write, on the disk the state dir lives on.

Starts the real ``zeusd`` (simulated GPUs, no added latency) with ``--state-dir`` on the
disk under the system temp dir and on tmpfs (/dev/shm, like /run). Times ``gpu.set_power_limit``
round trips two ways, rounds alternating: one connection writing again and again (its record
never changes: no disk write), and two connections taking turns (each write changes who is
on top of GPU 0's restore stack, so its record is rewritten: temp file, fsync, rename, fsync
of the directory). Prints medians and the ratio.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import BinaryIO

Conn = tuple[socket.socket, BinaryIO]
ROUNDS = 5
CALLS = 300


def start(state: str, directory: str) -> tuple[subprocess.Popen[str], str]:
    path = os.path.join(directory, "zeusd.sock")
    argv = [sys.executable, "-m", "zeusd", "--gpu-backend", "sim", "--socket-path", path]
    argv += ["--state-dir", state, "--rapl-root", "/nonexistent", "--log-level", "warning"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            return proc, path
    raise SystemExit("zeusd did not start")


def connect(path: str) -> Conn:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    return sock, sock.makefile("rb")


def write(conn: Conn, milliwatts: int, ident: int) -> None:
    params = {"gpu_ids": [0], "power_limit_mw": milliwatts}
    message = {"jsonrpc": "2.0", "method": "gpu.set_power_limit", "params": params, "id": ident}
    conn[0].sendall(json.dumps(message).encode() + b"\n")
    assert b"applied" in conn[1].readline()


def median_us(path: str, take_turns: bool) -> float:
    first, second = connect(path), connect(path)
    samples = []
    for i in range(CALLS):
        conn = second if take_turns and i % 2 else first
        start_t = time.perf_counter()
        write(conn, 300_000 + (i % 2) * 1000, i)
        samples.append(time.perf_counter() - start_t)
    for sock, reader in (first, second):
        reader.close()
        sock.close()
    return statistics.median(samples) * 1e6


def main() -> None:
    for name, parent in (("disk", None), ("tmpfs", "/dev/shm")):
        with (
            tempfile.TemporaryDirectory(dir=parent) as state_parent,
            tempfile.TemporaryDirectory(prefix="zb-") as sock_dir,
        ):
            proc, path = start(os.path.join(state_parent, "state"), sock_dir)
            try:
                same, turns = [], []
                for _ in range(ROUNDS):
                    same.append(median_us(path, False))
                    turns.append(median_us(path, True))
            finally:
                proc.terminate()
                proc.wait()
        unchanged, rewritten = statistics.median(same), statistics.median(turns)
        print(
            f"{name}: record unchanged {unchanged:.0f} us, record rewritten {rewritten:.0f} us "
            f"(median of per-round medians); ratio {rewritten / unchanged:.2f}"
        )


if __name__ == "__main__":
    main()
