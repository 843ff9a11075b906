"""``zeusd`` command line: parse flags, check privileges, run the daemon."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

import attrs
import trio

from zeusd import __version__, logfmt, token_cli, tokens
from zeusd.app import open_backend, serve
from zeusd.argtypes import positive_int, seconds
from zeusd.config import (
    DEFAULT_AUTH_TIMEOUT_S,
    DEFAULT_CLIENT_TIMEOUT_S,
    DEFAULT_CPU_POWER_POLL_HZ,
    DEFAULT_GPU_POWER_POLL_HZ,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_QUEUED_PER_CLIENT,
    DEFAULT_MAX_QUEUED_PER_GPU,
    DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
    DEFAULT_RAPL_ROOT,
    DEFAULT_SIM_GPUS,
    DEFAULT_SOCKET_PATH,
    DEFAULT_STATE_DIR,
    DEFAULT_TCP_BIND_ADDRESS,
    Config,
)
from zeusd.core.spec import API_GROUPS
from zeusd.server import fdlimit
from zeusd.server.listeners import StartupError, parse_host_port
from zeusd.sim.config import VENDORS

log = logging.getLogger("zeusd")

LOG_LEVELS = ("debug", "info", "warning", "error")


def _id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a numeric id (got {text!r})") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be in [0, {2**32 - 2}] (got {value})")
    return value


def _id_list(text: str) -> frozenset[int]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma list of numeric ids")
    return frozenset(_id(item) for item in items)


def _hz(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected samples per second (got {text!r})") from None
    # 100 Hz is the 10 ms floor of subscriptions; below one an hour looks like a dead stream.
    if not 1 / 3600 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1/3600 and 100 (got {text})")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _octal_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected octal like 660 (got {text!r})") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"must be between 000 and 777 (got {text})")
    return value


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _groups(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in API_GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown API group {unknown[0]!r} (groups: {', '.join(API_GROUPS)})"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a group is listed twice (got {text!r})")
    return tuple(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeusd",
        description="Serve privileged NVML GPU energy controls to unprivileged clients over "
        "line-delimited JSON-RPC 2.0.",
        epilog="To make a session token for TCP clients: zeusd token issue --help",
    )
    parser.add_argument("-V", "--version", action="version", version=f"zeusd {__version__}")
    parser.add_argument("--mode", choices=("uds", "tcp"), default="uds", help="transport (uds)")
    parser.add_argument("--socket-path", help=f"for --mode uds ({DEFAULT_SOCKET_PATH})")
    parser.add_argument("--socket-permissions", type=_octal_mode, help="octal mode (666)")
    parser.add_argument("--socket-uid", type=_id, help="owner uid of the socket file")
    parser.add_argument("--socket-gid", type=_id, help="group gid of the socket file")
    parser.add_argument(
        "--tcp-bind-address",
        type=_host_port,
        help=f"HOST:PORT for --mode tcp ({DEFAULT_TCP_BIND_ADDRESS})",
    )
    parser.add_argument(
        "--allow-unprivileged",
        action="store_true",
        help="start the nvml backend without root (GPU writes will then fail)",
    )
    parser.add_argument(
        "--num-workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="threads for blocking NVML calls (logical CPUs: %(default)s)",
    )
    parser.add_argument(
        "--gpu-backend",
        choices=("auto", "nvml", "amdsmi", "sim"),
        default="auto",
        help="GPU library: auto (the one of nvml and amdsmi that finds GPUs), nvml (NVIDIA), "
        "amdsmi (AMD) or sim (simulated GPUs) (%(default)s)",
    )
    parser.add_argument(
        "--sim-vendor",
        choices=VENDORS,
        help="the library --gpu-backend sim simulates: nvidia (NVML) or amd (amdsmi) (nvidia)",
    )
    parser.add_argument(
        "--gpu-command-overrides",
        metavar="FILE",
        help="TOML file of site commands that carry out gpu-control methods instead of the "
        "GPU library (no root needed then; see docs/deployment.md)",
    )
    parser.add_argument(
        "--sim-gpus", type=positive_int, help=f"number of simulated GPUs ({DEFAULT_SIM_GPUS})"
    )
    parser.add_argument("--sim-config", metavar="FILE", help="TOML file describing sim GPUs")
    parser.add_argument(
        "--sim-state",
        metavar="FILE",
        help="keep the simulated GPUs' settings in FILE, so they outlive the daemon",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=DEFAULT_STATE_DIR,
        help="restore records that outlive a crash (%(default)s; created 0700, refused if "
        "others can write it)",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=positive_int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longest request line accepted (%(default)s)",
    )
    parser.add_argument(
        "--enable",
        type=_groups,
        metavar="GROUPS",
        help=f"comma list of API groups to serve ({','.join(API_GROUPS)}); default: every "
        "group this node can serve (cpu-read only where the RAPL tree exists)",
    )
    parser.add_argument(
        "--rapl-root",
        metavar="DIR",
        default=DEFAULT_RAPL_ROOT,
        help="powercap sysfs tree for cpu-read (%(default)s)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines (text)"
    )
    trust = parser.add_argument_group("trust (see docs/security.md)")
    trust.add_argument(
        "--control-uids",
        type=_id_list,
        metavar="LIST",
        help="comma list of uids that may call gpu-control (root always may)",
    )
    trust.add_argument(
        "--control-gids",
        type=_id_list,
        metavar="LIST",
        help="comma list of gids whose members may call gpu-control",
    )
    trust.add_argument(
        "--token-key",
        "--signing-key-path",
        dest="token_key",
        metavar="FILE",
        help="key that signs session tokens; TCP clients must then authenticate "
        "(the file must not be accessible to group or others)",
    )
    trust.add_argument(
        "--allow-insecure-tcp",
        action="store_true",
        help="allow binding TCP to a non-loopback address without --token-key",
    )
    trust.add_argument(
        "--restore-on-exit",
        action="store_true",
        help="on shutdown, put back every GPU setting changed through the daemon",
    )
    trust.add_argument(
        "--max-connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connections beyond this are closed at once (%(default)s)",
    )
    trust.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="requests in progress per connection before it is no longer read (%(default)s)",
    )
    trust.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_MAX_BATCH,
        help="most requests in one batch (%(default)s)",
    )
    trust.add_argument(
        "--max-subscriptions",
        type=positive_int,
        default=DEFAULT_MAX_SUBSCRIPTIONS,
        help="power subscriptions the daemon holds at most, over all connections (%(default)s)",
    )
    trust.add_argument(
        "--max-subscriptions-per-connection",
        type=positive_int,
        default=DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
        help="power subscriptions one connection may hold at once (%(default)s)",
    )
    trust.add_argument(
        "--max-queued-per-gpu",
        type=positive_int,
        default=DEFAULT_MAX_QUEUED_PER_GPU,
        help="most requests queued on one GPU, all connections together (%(default)s)",
    )
    trust.add_argument(
        "--max-queued-per-client",
        type=positive_int,
        default=DEFAULT_MAX_QUEUED_PER_CLIENT,
        help="most requests one connection may have queued on one GPU (%(default)s)",
    )
    trust.add_argument(
        "--client-timeout",
        type=seconds,
        default=DEFAULT_CLIENT_TIMEOUT_S,
        metavar="SECONDS",
        help="time to finish a started line or HTTP request, and to take a reply (%(default)s)",
    )
    trust.add_argument(
        "--auth-timeout",
        type=seconds,
        default=DEFAULT_AUTH_TIMEOUT_S,
        metavar="SECONDS",
        help="with --token-key, a TCP connection not authenticated within this time is "
        "closed (%(default)s)",
    )
    http = parser.add_argument_group("HTTP dialect (see docs/protocol.md)")
    http.add_argument(
        "--gpu-power-poll-hz",
        type=_hz,
        default=DEFAULT_GPU_POWER_POLL_HZ,
        metavar="HZ",
        help="samples per second of GET /gpu/stream_power (%(default)s)",
    )
    http.add_argument(
        "--cpu-power-poll-hz",
        type=_hz,
        default=DEFAULT_CPU_POWER_POLL_HZ,
        metavar="HZ",
        help="samples per second of GET /cpu/stream_power (%(default)s)",
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gpu_backend != "sim" and (
        args.sim_gpus is not None or args.sim_config or args.sim_state or args.sim_vendor
    ):
        parser.error(
            "--sim-gpus, --sim-config, --sim-state and --sim-vendor need --gpu-backend sim"
        )
    if args.sim_state and args.sim_vendor == "amd":
        parser.error("--sim-state keeps simulated NVML GPUs only; drop it or --sim-vendor amd")
    if not args.state_dir:
        parser.error("--state-dir needs a directory")
    if args.sim_gpus is not None and args.sim_config:
        parser.error("--sim-gpus cannot be combined with --sim-config (the file lists the GPUs)")
    # A flag for the other transport would be silently ignored; say so instead.
    socket_flags = ("socket_path", "socket_permissions", "socket_uid", "socket_gid")
    if args.mode == "tcp" and any(getattr(args, flag) is not None for flag in socket_flags):
        parser.error("--socket-path/-permissions/-uid/-gid apply to --mode uds only")
    if args.mode == "uds" and args.tcp_bind_address is not None:
        parser.error("--tcp-bind-address needs --mode tcp")
    if args.mode == "uds" and args.allow_insecure_tcp:
        parser.error("--allow-insecure-tcp needs --mode tcp")
    host, port = args.tcp_bind_address or parse_host_port(DEFAULT_TCP_BIND_ADDRESS)
    if (
        args.mode == "tcp"
        and not is_loopback(host)
        and args.token_key is None
        and not args.allow_insecure_tcp
    ):
        parser.error(
            f"binding TCP to {host} lets anyone who can reach it change GPU settings: "
            "pass --token-key FILE, or --allow-insecure-tcp if that is really meant"
        )
    return Config(
        mode=args.mode,
        socket_path=args.socket_path or DEFAULT_SOCKET_PATH,
        socket_permissions=0o666 if args.socket_permissions is None else args.socket_permissions,
        socket_uid=args.socket_uid,
        socket_gid=args.socket_gid,
        tcp_host=host,
        tcp_port=port,
        allow_unprivileged=args.allow_unprivileged,
        num_workers=args.num_workers,
        gpu_backend=args.gpu_backend,
        sim_vendor=args.sim_vendor or "nvidia",
        gpu_command_overrides=args.gpu_command_overrides,
        sim_gpus=args.sim_gpus if args.sim_gpus is not None else DEFAULT_SIM_GPUS,
        sim_config=args.sim_config,
        sim_state=args.sim_state,
        max_line_bytes=args.max_line_bytes,
        log_level=args.log_level,
        log_format=args.log_format,
        control_uids=args.control_uids or frozenset(),
        control_gids=args.control_gids or frozenset(),
        token_key_file=args.token_key,
        allow_insecure_tcp=args.allow_insecure_tcp,
        restore_on_exit=args.restore_on_exit,
        max_connections=args.max_connections,
        max_in_flight=args.max_in_flight,
        max_batch=args.max_batch,
        max_queued_per_gpu=args.max_queued_per_gpu,
        max_queued_per_client=args.max_queued_per_client,
        client_timeout=args.client_timeout,
        gpu_power_poll_hz=args.gpu_power_poll_hz,
        cpu_power_poll_hz=args.cpu_power_poll_hz,
        max_subscriptions=args.max_subscriptions,
        max_subscriptions_per_connection=args.max_subscriptions_per_connection,
        auth_timeout=args.auth_timeout,
        enable=args.enable,
        rapl_root=args.rapl_root,
        state_dir=args.state_dir,
    )


def privilege_problem(config: Config, euid: int) -> str | None:
    """Why the daemon must not start with these privileges, or None."""
    if (
        config.gpu_backend == "sim"
        or euid == 0
        or config.allow_unprivileged
        or config.gpu_command_overrides is not None
    ):
        return None
    which = (
        "the nvml and amdsmi backends"
        if config.gpu_backend == "auto"
        else f"the {config.gpu_backend} backend"
    )
    return (
        f"{which} must run as root: changing power limits and clocks through the GPU "
        "library needs root (CAP_SYS_ADMIN). Run zeusd as root, give "
        "--gpu-command-overrides FILE to carry out writes with site commands instead, pass "
        "--allow-unprivileged to start anyway (GPU writes will fail), or use "
        "--gpu-backend sim to try it without a GPU."
    )


def _fit_fd_limit(config: Config) -> Config:
    """Raise RLIMIT_NOFILE for --max-connections, or serve fewer (one warning says so)."""
    max_connections, warning = fdlimit.apply(config.max_connections)
    if warning is not None:
        log.warning("%s", warning)
    return attrs.evolve(config, max_connections=max_connections)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_cli.main(args[1:])
    config = parse_config(args)
    logfmt.configure(config.log_level, config.log_format, sys.stderr)
    logging.getLogger("zeusd.ready").setLevel(logging.INFO)
    problem = privilege_problem(config, os.geteuid())
    if problem:
        print(f"zeusd: {problem}", file=sys.stderr)
        return 1
    if config.token_key_file is not None:
        try:
            config = attrs.evolve(config, token_key=tokens.load_key(config.token_key_file))
        except tokens.TokenKeyError as exc:
            print(f"zeusd: {exc}", file=sys.stderr)
            return 1
    try:
        backend = open_backend(config)
    except StartupError as exc:
        print(f"zeusd: {exc}", file=sys.stderr)
        return 1
    try:
        # After the backend is open, so that its descriptors are counted.
        config = _fit_fd_limit(config)
        trio.run(serve, config, backend)
    except (StartupError, fdlimit.FdLimitError) as exc:
        print(f"zeusd: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
