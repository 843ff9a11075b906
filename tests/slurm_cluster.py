"""A real single-node Slurm (Debian's slurm-wlm) on temporary dirs and ports, for the tests.

munged, slurmctld and slurmd run in the foreground as children of the test, with their own
munge key and socket, state and spool dirs, and free TCP ports; nothing under /etc is read
or written. The node has four fake GPUs (gres/gpu on character devices made with mknod, so
slurmd accepts them): Slurm hands jobs GPU indices exactly as on a GPU node.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

#: Programs the cluster needs (Debian packages slurmctld, slurmd, slurm-client, munge).
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol")
START_TIMEOUT_S = 120.0
NODE = "zeusdnode"
GPUS = 4


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is what Slurm's clients need."""

    def __init__(self, root: Path, prolog: Path, epilog: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self._write_config(prolog, epilog)

    def _write_config(self, prolog: Path, epilog: Path) -> None:
        root = self.root
        root.mkdir(exist_ok=True)
        for sub in ("munge", "state", "spool", "log", "dev"):
            (root / sub).mkdir()
        (root / "munge").chmod(0o700)
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for i in range(GPUS):  # slurmd wants character devices; these are /dev/null's numbers
            os.mknod(root / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(1, 3))
        host = socket.gethostname().split(".")[0]
        self.munge_socket = root / "munge" / "socket"
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=zeusdtest",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "CredType=cred/munge",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "GresTypes=gpu",
                    # As in docs/deployment.md: run the Prolog when the job is allocated.
                    "PrologFlags=Alloc",
                    f"Prolog={prolog}",
                    f"Epilog={epilog}",
                    f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=2 "
                    f"Gres=gpu:{GPUS} State=UNKNOWN",
                    f"PartitionName=test Nodes={NODE} Default=YES MaxTime=10 State=UP",
                    "",
                ]
            )
        )
        (root / "gres.conf").write_text(
            f"NodeName={NODE} Name=gpu File={root / 'dev'}/nvidia[0-{GPUS - 1}]\n"
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.root / "log" / f"{name}.out"
        self._logs.append(log)
        with log.open("wb") as out:
            self._procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env
                )
            )

    def start(self) -> float:
        """Start munged, slurmctld and slurmd; return seconds until the node was idle."""
        began = time.monotonic()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # the socket sits in a private temporary directory
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'key'}",
                f"--pid-file={m / 'pid'}",
                f"--log-file={m / 'log'}",
                f"--seed-file={m / 'seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", "the node to be idle")
        return time.monotonic() - began

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():  # type: ignore[operator]
            for proc in self._procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args[0]} exited waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm not up in {START_TIMEOUT_S} s: {what}\n{self.logs()}")
            time.sleep(0.2)

    def run(self, *argv: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**self.env, **(env or {})},
        )
        assert done.returncode == 0, f"{argv}: {done.stderr}\n{self.logs()}"
        return done.stdout

    def node_state(self) -> str:
        done = subprocess.run(
            ["sinfo", "-h", "-n", NODE, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=self.env,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    def node_reason(self) -> str:
        return self.run("sinfo", "-h", "-n", NODE, "-o", "%E").strip()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no job is left and the node is idle again (Epilog finished)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.run("squeue", "-h").strip() and self.node_state() == "idle":
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"node {self.node_state()!r} ({self.node_reason()}) after {timeout} s\n"
                    + self.logs()
                )
            time.sleep(0.2)

    def logs(self) -> str:
        parts = []
        for path in [*self._logs, *sorted((self.root / "log").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self._procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
