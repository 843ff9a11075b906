"""Command-line parsing and the privilege check (the process itself is in test_process)."""

from __future__ import annotations

import pytest

from zeusd.cli import parse_config, privilege_problem
from zeusd.config import Config


def test_defaults_match_the_original_daemon() -> None:
    """Flag defaults are the contract's: uds, /var/run/zeusd.sock, 666, 127.0.0.1:4938."""
    config = parse_config([])
    assert config.mode == "uds"
    assert config.socket_path == "/var/run/zeusd.sock"
    assert config.socket_permissions == 0o666
    assert (config.tcp_host, config.tcp_port) == ("127.0.0.1", 4938)
    assert config.gpu_backend == "nvml"
    assert config.sim_gpus == 4
    assert config.max_line_bytes == 1024 * 1024
    assert config.num_workers >= 1


def test_tcp_flags_are_parsed() -> None:
    """--mode tcp with its bind address lands in the Config."""
    config = parse_config(["--mode=tcp", "--tcp-bind-address=[::1]:5000"])
    assert (config.mode, config.tcp_host, config.tcp_port) == ("tcp", "::1", 5000)


def test_flags_are_parsed() -> None:
    """Every flag lands in the Config."""
    config = parse_config(
        [
            "--socket-path=/run/z.sock",
            "--socket-permissions=660",
            "--socket-uid=10",
            "--socket-gid=20",
            "--num-workers=3",
            "--gpu-backend=sim",
            "--sim-gpus=8",
            "--max-line-bytes=4096",
            "--log-level=debug",
            "--allow-unprivileged",
        ]
    )
    assert config == Config(
        socket_path="/run/z.sock",
        socket_permissions=0o660,
        socket_uid=10,
        socket_gid=20,
        num_workers=3,
        gpu_backend="sim",
        sim_gpus=8,
        max_line_bytes=4096,
        log_level="debug",
        allow_unprivileged=True,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--socket-permissions=888"],
        ["--socket-permissions=1777"],
        ["--num-workers=0"],
        ["--max-line-bytes=-1"],
        ["--tcp-bind-address=nope"],
        ["--socket-uid=-1"],
        ["--mode=udp"],
        ["--sim-gpus=2"],
        ["--gpu-backend=sim", "--sim-gpus=2", "--sim-config=x.toml"],
        ["--gpu-backend=sim", "--sim-gpus=0"],
        ["--enable=gpu-write"],
        ["--enable=gpu-read,gpu-read"],
        ["--enable="],
        ["--mode=tcp", "--socket-path=/tmp/x.sock"],
        ["--mode=tcp", "--socket-permissions=600"],
        ["--tcp-bind-address=127.0.0.1:1"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid or conflicting flags exit with status 2 and a message."""
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_nvml_backend_needs_root() -> None:
    """Non-root with the nvml backend is refused, with the way out in the message."""
    problem = privilege_problem(Config(gpu_backend="nvml"), euid=1000)
    assert problem is not None
    assert "root" in problem
    assert "--allow-unprivileged" in problem


@pytest.mark.parametrize(
    ("config", "euid"),
    [
        (Config(gpu_backend="nvml"), 0),
        (Config(gpu_backend="nvml", allow_unprivileged=True), 1000),
        (Config(gpu_backend="sim"), 1000),
    ],
)
def test_allowed_privilege_combinations(config: Config, euid: int) -> None:
    """Root, an explicit opt-in, or the sim backend may start."""
    assert privilege_problem(config, euid) is None
