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
    assert config.gpu_backend == "auto"  # section 10: the vendor library that finds GPUs
    assert config.sim_gpus == 4
    assert config.max_line_bytes == 1024 * 1024
    assert config.num_workers >= 1
    assert config.state_dir == "/run/zeusd"
    assert config.sim_state is None


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
            "--state-dir=/var/lib/zd",
            "--sim-state=/tmp/sim.json",
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
        state_dir="/var/lib/zd",
        sim_state="/tmp/sim.json",
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


def test_trust_defaults() -> None:
    """Limits default to the contract's 1024 / 64 / 256; nothing is restricted by default."""
    config = parse_config([])
    assert (config.max_connections, config.max_in_flight, config.max_batch) == (1024, 64, 256)
    assert config.control_uids == config.control_gids == frozenset()
    assert config.token_key_file is None
    assert not config.restore_on_exit
    assert config.log_format == "text"
    assert config.client_timeout == 30.0


def test_trust_flags_are_parsed() -> None:
    """Every trust flag lands in the Config."""
    config = parse_config(
        [
            "--control-uids=1000,1001",
            "--control-gids=50",
            "--token-key=/etc/zeusd/key",
            "--restore-on-exit",
            "--max-connections=8",
            "--max-in-flight=4",
            "--max-batch=16",
            "--log-format=json",
            "--client-timeout=2.5",
        ]
    )
    assert config.control_uids == frozenset({1000, 1001})
    assert config.control_gids == frozenset({50})
    assert config.token_key_file == "/etc/zeusd/key"
    assert config.restore_on_exit
    assert (config.max_connections, config.max_in_flight, config.max_batch) == (8, 4, 16)
    assert config.log_format == "json"
    assert config.client_timeout == 2.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--control-uids=alice"], "numeric id"),
        (["--control-uids=,"], "comma list"),
        (["--max-batch=0"], "must be >= 1"),
        (["--client-timeout=0"], "positive number of seconds"),
        (["--client-timeout=inf"], "positive number of seconds"),
        (["--allow-insecure-tcp"], "needs --mode tcp"),
        (["--mode=tcp", "--tcp-bind-address=0.0.0.0:1"], "--allow-insecure-tcp"),
        (["--mode=tcp", "--tcp-bind-address=node7:1"], "--token-key FILE"),
    ],
)
def test_bad_trust_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad trust flags exit 2 with a message naming the problem."""
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "127.8.0.1:1", "[::1]:1", "localhost:1"])
def test_loopback_tcp_needs_no_token(address: str) -> None:
    """Loopback binds need neither --token-key nor --allow-insecure-tcp."""
    assert parse_config(["--mode=tcp", f"--tcp-bind-address={address}"]).mode == "tcp"


def test_non_loopback_tcp_with_token_key_is_allowed() -> None:
    """A public bind is fine once tokens are required."""
    config = parse_config(["--mode=tcp", "--tcp-bind-address=0.0.0.0:1", "--token-key=k"])
    assert config.tcp_host == "0.0.0.0"
