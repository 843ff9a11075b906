"""The systemd units in deploy/systemd: valid, hardened, and consistent with the daemon."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from process_helpers import ZEUSD
from zeusd.config import DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET_PATH
from zeusd.server import fdlimit

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def read_unit(name: str) -> configparser.ConfigParser:
    # Units repeat keys (DeviceAllow=, SystemCallFilter=); keep the last, which is enough here.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_socket_unit_listens_where_clients_look() -> None:
    """The socket unit's path is the daemon's (and clients') default path, one stream socket."""
    socket_unit = read_unit("zeusd.socket")["Socket"]
    assert socket_unit["ListenStream"] == DEFAULT_SOCKET_PATH.replace("/var/run/", "/run/")
    assert socket_unit["Accept"] == "no"


def test_service_keeps_only_cap_sys_admin() -> None:
    """The service keeps just CAP_SYS_ADMIN (NVML setters), with no new privileges."""
    service = read_unit("zeusd.service")["Service"]
    assert service["CapabilityBoundingSet"] == "CAP_SYS_ADMIN"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["DevicePolicy"] == "closed"
    assert read_unit("zeusd.service")["Unit"]["Requires"] == "zeusd.socket"


#: Descriptors NVML and the driver may hold on a large node (several per GPU).
DRIVER_FDS = 128


def test_service_allows_descriptors_for_default_max_connections() -> None:
    """LimitNOFILE= fits --max-connections 1024 (zeusd cannot raise it under the filter)."""
    service = read_unit("zeusd.service")["Service"]
    soft, _, hard = service["LimitNOFILE"].partition(":")
    assert int(soft) >= fdlimit.needed(DEFAULT_MAX_CONNECTIONS, DRIVER_FDS)
    assert not hard or int(hard) >= int(soft)
    assert "@resources" in service["SystemCallFilter"]  # why the unit must set it


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (Debian package 'systemd')")
def test_units_verify_and_score_as_hardened(tmp_path: Path) -> None:
    """systemd-analyze accepts both units and rates the service's exposure at most 3.0 of 10."""
    assert ANALYZE is not None
    shutil.copy(UNITS / "zeusd.socket", tmp_path)
    text = (UNITS / "zeusd.service").read_text()
    # Point ExecStart at the zeusd under test: verify checks that the binary exists.
    lines = [
        f"ExecStart={ZEUSD}" if ln.startswith("ExecStart=") else ln for ln in text.splitlines()
    ]
    (tmp_path / "zeusd.service").write_text("\n".join(lines) + "\n")
    units = [str(tmp_path / "zeusd.socket"), str(tmp_path / "zeusd.service")]
    verify = subprocess.run(
        [ANALYZE, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=30", units[1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    assert "Overall exposure level for zeusd.service" in security.stdout
