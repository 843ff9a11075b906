"""zeusctl watch: driven as a person would, in a real terminal (tmux), against a sim zeusd."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fake_rapl import make_tree, package_energy, write_int
from process_helpers import DaemonProcess, short_tempdir, start_daemon
from zeusd.ctl import run
from zeusd.watch import EnergySince

ZEUSCTL = str(Path(sys.executable).with_name("zeusctl"))
TMUX = shutil.which("tmux")
WAIT_S = 20.0


def test_energy_since_keeps_what_was_counted_when_a_counter_starts_again() -> None:
    """A counter going back (a new daemon, a driver reload) adds nothing and subtracts nothing."""
    since = EnergySince()
    assert [since.used(0, c) for c in (1_000, 1_500, 1_700, 200, 450)] == [0, 500, 700, 700, 950]
    assert since.used(1, 5) == 0  # devices are counted apart


def test_piped_watch_prints_count_frames_with_every_column() -> None:
    """Not a terminal: --count frames, one table each, GPU and CPU rows with their values."""
    directory = Path(short_tempdir())
    rapl = make_tree(str(directory / "rapl"), (True,))
    socket_path = str(directory / "zeusd.sock")
    daemon = start_daemon(f"--rapl-root={rapl}", socket_path=socket_path, sim_gpus=2)
    try:
        with daemon.connect() as conn:
            conn.result("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=300_000)
            conn.result(
                "gpu.set_gpu_locked_clocks", gpu_ids=[0], min_clock_mhz=1000, max_clock_mhz=1500
            )
        out, err = io.StringIO(), io.StringIO()
        code = run(
            ["--socket-path", socket_path, "watch", "--count", "2", "--interval", "0.1"], out, err
        )
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert text.count("GPU  NAME") == 2
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\s*(\d)\s+NVIDIA.*$", text, re.M)}
    assert re.search(r"\s700\.0\s", rows["0"])
    assert "1000-1500" in rows["0"]
    assert re.search(r"\s300\.0\s", rows["1"])
    assert re.search(r"^\s*CPU\s+PACKAGE W\s+DRAM W\s+ENERGY J", text, re.M)
    assert re.search(r"^\s*0\s+\d+\.\d\s+\d+\.\d\s+\d+\.\d\s*$", text, re.M)


def test_watch_of_a_gpu_the_daemon_lacks_exits_1(daemon_path: tuple[DaemonProcess, str]) -> None:
    """--gpus naming a GPU zeusd does not have: the daemon's -32602 is shown, exit 1."""
    _, socket_path = daemon_path
    out, err = io.StringIO(), io.StringIO()
    code = run(["--socket-path", socket_path, "watch", "--gpus", "0,9", "--count", "1"], out, err)
    assert code == 1
    assert "unknown GPU 9" in err.getvalue()


@pytest.mark.parametrize("bad", [["--interval", "0"], ["--count", "0"], ["--gpus", "0,0"]])
def test_bad_watch_options_are_usage_errors(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad --interval, --count or --gpus: exit 2 with argparse's message, nothing sent."""
    out = io.StringIO()
    assert run(["--socket-path", "/nonexistent", "watch", *bad], out, io.StringIO()) == 2
    assert f"argument {bad[0]}:" in capsys.readouterr().err
    assert out.getvalue() == ""


@pytest.fixture
def daemon_path() -> Iterator[tuple[DaemonProcess, str]]:
    directory = short_tempdir()
    socket_path = os.path.join(directory, "zeusd.sock")
    daemon = start_daemon(socket_path=socket_path, sim_gpus=2)
    try:
        yield daemon, socket_path
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- in a real terminal -------------------------------------------------------------------------


# Runs argv[1:] with Ctrl-C going to it alone (as a shell would), then prints its exit status.
_REPORT_EXIT = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
done = subprocess.run(sys.argv[1:], preexec_fn=reset)
print("zeusctl exited", done.returncode, flush=True)
"""


class Tmux:
    """A private tmux server (its own socket) with one 110x30 window running a command."""

    def __init__(self, directory: str, command: list[str]) -> None:
        assert TMUX is not None
        self._base = [TMUX, "-S", os.path.join(directory, "tmux.sock")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
        subprocess.run(
            [*self._base, "-f", "/dev/null", "new-session", "-d", "-x", "110", "-y", "30",
             "-s", "w", *command],
            check=True, timeout=30, env=env,
        )  # fmt: skip
        self.tmux("set-option", "-t", "w", "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self._base, *args], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "w")

    def pane(self, field: str) -> str:
        return self.tmux("display-message", "-p", "-t", "w", f"#{{{field}}}").strip()

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never showed {what}:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=30, check=False)


def gpu_row(screen: str, gpu: int) -> str:
    match = re.search(rf"^\s*{gpu}\s+NVIDIA.*$", screen, re.M)
    return match.group(0) if match else ""


@pytest.mark.skipif(TMUX is None, reason="tmux missing (Debian package 'tmux')")
def test_watch_in_a_terminal_refreshes_in_place_and_quits_on_ctrl_c() -> None:
    """In tmux: the table updates in place as settings change, survives a daemon restart,
    and Ctrl-C ends it with exit status 0 and no traceback."""
    directory = short_tempdir()
    rapl = make_tree(os.path.join(directory, "rapl"), (True,))
    socket_path = os.path.join(directory, "zeusd.sock")
    args = (f"--rapl-root={rapl}",)
    daemon = start_daemon(*args, socket_path=socket_path, sim_gpus=2)
    watch = [ZEUSCTL, "--socket-path", socket_path, "watch", "--interval", "0.2"]
    term = Tmux(directory, [sys.executable, "-c", _REPORT_EXIT, *watch])
    try:
        first = term.wait_for(lambda s: "700.0" in gpu_row(s, 1), "GPU 1 at 700 W")
        assert "GPU  NAME" in first
        assert "CPU  PACKAGE W" in first
        with daemon.connect() as conn:
            conn.result("gpu.set_power_limit", gpu_ids=[1], power_limit_mw=300_000)
            conn.result(
                "gpu.set_gpu_locked_clocks", gpu_ids=[1], min_clock_mhz=1005, max_clock_mhz=1395
            )
        write_int(package_energy(rapl, 0), 1_000_000 + 7_000_000)
        changed = term.wait_for(
            lambda s: (
                re.search(r"\s300\.0\s.*1005-1395", gpu_row(s, 1)) is not None
                and re.search(r"^\s*0\s+\S+\s+\S+\s+7\.0\s*$", s, re.M) is not None
            ),
            "GPU 1 at 300 W locked to 1005-1395 MHz, CPU 0 at 7.0 J",
        )
        assert "700.0" in gpu_row(changed, 0)
        # In place: after many refreshes the screen holds one table and nothing scrolled off.
        assert changed.count("GPU  NAME") == 1
        assert term.pane("history_size") == "0"

        daemon.stop()
        term.wait_for(lambda s: "cannot reach zeusd" in s, "the daemon gone")
        daemon = start_daemon(*args, socket_path=socket_path, sim_gpus=2)
        again = term.wait_for(lambda s: "700.0" in gpu_row(s, 1), "the new daemon's GPU 1")
        # The new daemon's simulated counters start lower: energy used never goes negative.
        for gpu in (0, 1):
            assert not re.search(r"\s-\d", gpu_row(again, gpu)), again

        term.tmux("send-keys", "-t", "w", "C-c")
        # The wrapper prints zeusctl's exit status: tmux itself sometimes learns a pane's
        # status only long after the process is gone (seen under load: a zombie).
        ended = term.wait_for(lambda s: "zeusctl exited " in s, "zeusctl's exit")
        assert "zeusctl exited 0" in ended, ended
        assert "Traceback" not in ended
    finally:
        term.close()
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
