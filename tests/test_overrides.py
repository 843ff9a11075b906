"""--gpu-command-overrides: the file's checks, running commands, and the device wrapper."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from zeusd.gpu.backend import NvmlBackend, NvmlCallError
from zeusd.gpu.overrides import (
    CommandFailedError,
    OverriddenBackend,
    OverridesError,
    load_overrides,
    parse_overrides,
)
from zeusd.sim import SimNvml, default_sim_gpus

RECORD = """#!/bin/sh
# Append this command's arguments, one line per call, to the file named first.
out="$1"; shift
echo "$@" >> "$out"
"""


def _script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def _toml(path: str) -> str:
    return path.replace("\\", "\\\\")


def test_placeholders_are_filled_and_commands_run_in_order(tmp_path: Path) -> None:
    """Both commands run, in order, with mW, W (decimal when needed) and the GPU id."""
    record = _script(tmp_path, "record.sh", RECORD)
    log = tmp_path / "calls"
    overrides = parse_overrides(
        f"""
[set_power_limit]
commands = [
  ["{record}", "{log}", "first", "{{gpu_id}}", "{{power_limit_mw}}"],
  ["{record}", "{log}", "second", "{{power_limit_w}}", "W"],
]
"""
    )
    overrides["set_power_limit"].run(
        {"gpu_id": "3", "power_limit_mw": "250500", "power_limit_w": "250.5"}
    )
    assert log.read_text().splitlines() == ["first 3 250500", "second 250.5 W"]


def test_first_failure_stops_and_reports_status_and_output(tmp_path: Path) -> None:
    """A non-zero exit stops the list: -32001 detail has the exit status and output tail."""
    fail = _script(tmp_path, "fail.sh", "#!/bin/sh\necho 'cannot set power: busy' >&2\nexit 3\n")
    record = _script(tmp_path, "record.sh", RECORD)
    log = tmp_path / "calls"
    overrides = parse_overrides(
        f"""
[reset_power_limit]
commands = [["{fail}", "{{gpu_id}}"], ["{record}", "{log}", "never"]]
"""
    )
    with pytest.raises(CommandFailedError) as info:
        overrides["reset_power_limit"].run({"gpu_id": "0"})
    detail = info.value.detail()
    assert detail["nvml_error"] == "NVML_ERROR_UNKNOWN"
    assert detail["exit_status"] == 3
    assert "cannot set power: busy" in detail["output_tail"]
    assert "command 1 of 2" in detail["message"]
    assert "exited 3" in detail["message"]
    assert not log.exists()


def test_error_pattern_fails_a_command_that_exits_zero(tmp_path: Path) -> None:
    """Output matching error_pattern is a failure even with exit status 0."""
    said = _script(tmp_path, "said.sh", "#!/bin/sh\necho 'ERROR: no such GPU'\nexit 0\n")
    overrides = parse_overrides(
        f'[reset_gpu_locked_clocks]\ncommands = [["{said}"]]\nerror_pattern = "^ERROR"\n'
    )
    with pytest.raises(CommandFailedError) as info:
        overrides["reset_gpu_locked_clocks"].run({"gpu_id": "1"})
    assert info.value.exit_status == 0
    assert "error_pattern" in info.value.message
    quiet = parse_overrides(f'[reset_gpu_locked_clocks]\ncommands = [["{said}"]]\n')
    quiet["reset_gpu_locked_clocks"].run({"gpu_id": "1"})  # no pattern: exit 0 is success


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    """A command past timeout_s is killed, its whole process group too: a TIMEOUT error."""
    pidfile = tmp_path / "child.pid"
    overrides = parse_overrides(
        f"""
[set_persistence_mode]
commands = [["/bin/sh", "-c", "sleep 60 & echo $! > {pidfile}; echo waiting; wait"]]
timeout_s = 0.5
"""
    )
    start = time.monotonic()
    with pytest.raises(CommandFailedError) as info:
        overrides["set_persistence_mode"].run({"gpu_id": "0", "enabled": "1"})
    elapsed = time.monotonic() - start
    assert info.value.nvml_error == "NVML_ERROR_TIMEOUT"
    assert info.value.exit_status is None
    assert "waiting" in info.value.output_tail
    assert elapsed < 30  # far below the sleep: it did not wait for the grandchild
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_program_that_cannot_start_is_a_device_error(tmp_path: Path) -> None:
    """A program removed after start-up fails its GPU, it does not crash the daemon."""
    gone = _script(tmp_path, "gone.sh", "#!/bin/sh\n")
    overrides = parse_overrides(f'[reset_power_limit]\ncommands = [["{gone}"]]\n')
    os.unlink(gone)
    with pytest.raises(CommandFailedError, match="could not be started"):
        overrides["reset_power_limit"].run({"gpu_id": "0"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no method tables"),
        ('[set_clocks]\ncommands = [["/bin/true"]]', "unknown method"),
        ('[set_power_limit]\ncommand = [["/bin/true"]]', "unknown key 'command'"),
        ("[set_power_limit]\ntimeout_s = 1", "'commands' is missing"),
        ('[set_power_limit]\ncommands = ["/bin/true"]', "non-empty list of commands"),
        ("[set_power_limit]\ncommands = [[]]", "non-empty list of commands"),
        ('[reset_power_limit]\ncommands = [["/bin/echo", "{power_limit_w}"]]', "{power_limit_w}"),
        ('[set_power_limit]\ncommands = [["/bin/echo", "{gpu_id!r}"]]', "unknown placeholder"),
        ('[set_power_limit]\ncommands = [["/bin/echo", "{gpu_id:>4}"]]', "unknown placeholder"),
        ('[set_power_limit]\ncommands = [["/bin/echo", "{"]]', "bad placeholder"),
        ('[set_power_limit]\ncommands = [["{gpu_id}"]]', "cannot be a placeholder"),
        ('[set_power_limit]\ncommands = [["no-such-program-zeusd"]]', "not found"),
        ('[set_power_limit]\ncommands = [["bin/true"]]', "absolute path"),
        ('[set_power_limit]\ncommands = [["/bin/true"]]\ntimeout_s = 0', "timeout_s"),
        ('[set_power_limit]\ncommands = [["/bin/true"]]\ntimeout_s = inf', "timeout_s"),
        ('[set_power_limit]\ncommands = [["/bin/true"]]\ntimeout_s = true', "timeout_s"),
        ('[set_power_limit]\ncommands = [["/bin/true"]]\nerror_pattern = "("', "regex"),
        ("set_power_limit = 1", "must be a table"),
        ("[set_power_limit", "TOML syntax error"),
    ],
)
def test_bad_files_are_refused_with_the_reason(text: str, message: str) -> None:
    """Every mistake in the file is a start-up error that says what and where."""
    with pytest.raises(OverridesError) as info:
        parse_overrides(text, "--gpu-command-overrides x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("--gpu-command-overrides x.toml")


def test_literal_braces_and_bare_program_names_are_fine() -> None:
    """{{ and }} are literal braces; a bare program name is found on PATH at start-up."""
    overrides = parse_overrides('[reset_power_limit]\ncommands = [["true", "{{literal}}"]]\n')
    overrides["reset_power_limit"].run({"gpu_id": "0"})


def _write(path: Path, text: str, mode: int) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o646])
def test_a_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Group- or world-writable: refused, with the fix in the message."""
    path = _write(tmp_path / "o.toml", '[reset_power_limit]\ncommands = [["true"]]\n', mode)
    with pytest.raises(OverridesError) as info:
        load_overrides(path)
    assert f"mode {mode:03o}" in str(info.value)
    assert "chmod go-w" in str(info.value)


def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    """Owned by neither root nor the daemon's user: refused, naming both uids."""
    path = _write(tmp_path / "o.toml", '[reset_power_limit]\ncommands = [["true"]]\n', 0o644)
    if os.geteuid() == 0:
        os.chown(path, 54321, 54321)
        euid = 0
    else:
        euid = os.geteuid() + 1  # the file is ours, the "daemon" is someone else
    with pytest.raises(OverridesError, match="owned by uid"):
        load_overrides(path, euid=euid)


def test_a_safe_file_loads(tmp_path: Path) -> None:
    """Owned by the daemon's user, mode 0644: loaded."""
    path = _write(tmp_path / "o.toml", '[reset_power_limit]\ncommands = [["true"]]\n', 0o644)
    assert set(load_overrides(path)) == {"reset_power_limit"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_not_a_regular_file_or_missing_is_refused(tmp_path: Path) -> None:
    """A directory, or a missing path, is a start-up error too."""
    with pytest.raises(OverridesError, match="not a regular file"):
        load_overrides(str(tmp_path))
    with pytest.raises(OverridesError, match="cannot open"):
        load_overrides(str(tmp_path / "missing.toml"))


def _backend(text: str) -> tuple[OverriddenBackend, SimNvml]:
    sim = SimNvml(default_sim_gpus(2))
    inner = NvmlBackend.open(sim, name="sim")
    sim.arm()
    return OverriddenBackend(inner, parse_overrides(text)), sim


def test_device_runs_overridden_writes_and_reads_through_the_library(tmp_path: Path) -> None:
    """Overridden writes run commands (the library is untouched); reads stay the library's."""
    record = _script(tmp_path, "record.sh", RECORD)
    log = tmp_path / "calls"
    backend, sim = _backend(
        f"""
[set_power_limit]
commands = [["{record}", "{log}", "spl", "{{gpu_id}}", "{{power_limit_w}}"]]
[set_persistence_mode]
commands = [["{record}", "{log}", "spm", "{{gpu_id}}", "{{enabled}}"]]
"""
    )
    device = backend.devices[1]
    device.set_power_limit(300_000)
    device.set_persistence_mode(True)
    device.reset_power_limit()  # no override of its own: set_power_limit's, with the default
    assert log.read_text().splitlines() == ["spl 1 300", "spm 1 1", "spl 1 700"]
    assert sim.devices[1].power_limit_mw == 700_000  # the library never saw the writes
    assert device.get_power_limit() == 700_000
    device.set_gpu_locked_clocks(900, 1200)  # not overridden: the library does it
    assert sim.devices[1].gpu_locked_clocks == (900, 1200)
    assert device.get_locked_clocks() == ((900, 1200), None)
    assert backend.name == "sim"
    assert backend.infos == NvmlBackend.open(SimNvml(default_sim_gpus(2)), name="x").infos


def test_reset_locked_clocks_uses_each_clocks_override_and_tries_both(tmp_path: Path) -> None:
    """Without its own override, reset_locked_clocks runs both resets, each overridden or not."""
    fail = _script(tmp_path, "fail.sh", "#!/bin/sh\necho nope\nexit 1\n")
    backend, sim = _backend(f'[reset_gpu_locked_clocks]\ncommands = [["{fail}"]]\n')
    device = backend.devices[0]
    device.set_mem_locked_clocks(2619, 2619)
    with pytest.raises(NvmlCallError) as info:
        device.reset_locked_clocks()
    assert info.value.message.startswith("graphics clocks:")
    assert sim.devices[0].mem_locked_clocks is None  # the memory reset still ran
