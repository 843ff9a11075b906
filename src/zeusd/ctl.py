"""``zeusctl``: call any zeusd method from a shell.

Exit status: 0 success, 1 the daemon answered with a JSON-RPC error (printed to stderr as
JSON), 2 usage or connection errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console

from zeusd.argtypes import positive_int, seconds
from zeusd.client import Address, ZeusdClient, ZeusdConnectionError, ZeusdRpcError
from zeusd.client.transport import env_address
from zeusd.watch import watch

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value``: the value as JSON when it parses (``[0,1]``, ``true``), else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise UsageError(f"expected name=value (got {text!r})")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        name, value = parse_param(item)
        if name in params:
            raise UsageError(f"param {name!r} given twice")
        params[name] = value
    return params


def _gpu_list(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1 (got {text!r})") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids >= 0 (got {text!r})")
    return ids


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket-path", help="Unix socket (default: $ZEUSD_SOCK_PATH)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="TCP address ($ZEUSD_HOST_PORT)")
    parser.add_argument("--token", help="session token (default: $ZEUSD_TOKEN)")
    parser.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait (30)")


def build_watch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeusctl watch",
        usage="zeusctl [connection options] watch [--interval S] [--count N] [--gpus IDS]",
        description="Show each GPU's power, power limit, energy and clock locks (and the CPU "
        "packages' power and energy), refreshed in place until Ctrl-C.",
    )
    _add_connection_options(parser)
    parser.add_argument("watch", choices=["watch"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--interval", type=seconds, default=1.0, metavar="S", help="seconds between refreshes (1)"
    )
    parser.add_argument("--count", type=positive_int, metavar="N", help="stop after N refreshes")
    parser.add_argument("--gpus", type=_gpu_list, metavar="IDS", help="GPU ids, e.g. 0,1 (all)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeusctl",
        description="Call a zeusd JSON-RPC method and print its result as JSON. "
        "'zeusctl discover' prints a table instead (add --json for the raw result); "
        "'zeusctl watch' shows the GPUs live (zeusctl watch --help).",
        epilog="example: zeusctl gpu.set_power_limit gpu_ids=[0,1] power_limit_mw=250000",
    )
    _add_connection_options(parser)
    parser.add_argument(
        "--notify", action="store_true", help="send as a notification: no reply, no error"
    )
    parser.add_argument("--json", action="store_true", help="raw JSON for discover too")
    parser.add_argument("method", help="e.g. discover, gpu.get_power_limit")
    parser.add_argument("params", nargs="*", metavar="name=value", help="params, by name")
    return parser


def _address(args: argparse.Namespace) -> Address:
    if args.socket_path:
        return Address.unix(args.socket_path)
    if args.tcp:
        try:
            return Address.tcp(args.tcp)
        except ValueError as exc:
            raise UsageError(f"--tcp: {exc}") from None
    try:
        return env_address()
    except ValueError as exc:
        raise UsageError(f"ZEUSD_HOST_PORT: {exc}") from None


def discover_table(result: dict[str, Any]) -> str:
    """The ``discover`` result as a table a person can read."""
    out = [
        f"zeusd {result.get('version', '?')} ({result.get('backend', '?')} backend)",
        "enabled API groups: " + (", ".join(result.get("enabled_api_groups", [])) or "none"),
        f"authentication required: {'yes' if result.get('auth_required') else 'no'}",
        "",
    ]
    gpus = result.get("gpus", [])
    rows = [("GPU", "NAME", "PCI ADDRESS", "ENERGY COUNTER", "UUID")]
    rows += [
        (
            str(g.get("id")),
            str(g.get("name")),
            str(g.get("pci_address")),
            "yes" if g.get("cumulative_energy_available") else "no",
            str(g.get("uuid")),
        )
        for g in gpus
    ]
    out += _table(rows) if gpus else ["no GPUs"]
    out.append("")
    cpus = result.get("cpus", [])
    cpu_rows = [("CPU", "DRAM ENERGY")]
    cpu_rows += [(str(c.get("id")), "yes" if c.get("dram_available") else "no") for c in cpus]
    out += _table(cpu_rows) if cpus else ["no CPUs"]
    return "\n".join(out)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _run_watch(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    parser = build_watch_parser()
    try:
        args = parser.parse_args(argv)
        address = _address(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except UsageError as exc:
        parser.print_usage(stderr)
        print(f"zeusctl watch: error: {exc}", file=stderr)
        return EXIT_USAGE
    token = args.token if args.token is not None else (os.environ.get("ZEUSD_TOKEN") or None)
    client = ZeusdClient(address, token=token, timeout=args.timeout)
    try:
        watch(
            client,
            interval_s=args.interval,
            count=args.count,
            gpu_ids=args.gpus,
            # Piped output has no width to fit: wide enough that rows never wrap.
            console=Console(file=stdout, width=None if stdout.isatty() else 120),
        )
    except ZeusdRpcError as exc:
        print(f"zeusctl watch: {exc}", file=stderr)
        return EXIT_RPC_ERROR
    finally:
        client.close()
    return EXIT_OK


_VALUED_OPTIONS = frozenset({"--socket-path", "--tcp", "--token", "--timeout"})


def _first_word(argv: Sequence[str]) -> str | None:
    """The method (or ``watch``): the first argument that is neither an option nor its value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    if _first_word(argv) == "watch":
        return _run_watch(argv, stdout, stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        params = parse_params(args.params)
        address = _address(args)
    except UsageError as exc:
        parser.print_usage(stderr)
        print(f"zeusctl: error: {exc}", file=stderr)
        return EXIT_USAGE
    token = args.token if args.token is not None else (os.environ.get("ZEUSD_TOKEN") or None)
    client = ZeusdClient(address, token=token, timeout=args.timeout)
    try:
        if args.notify:
            client.send_notification(args.method, params)
            return EXIT_OK
        result = client.request(args.method, params)
    except ZeusdRpcError as exc:
        error = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            error["data"] = exc.data
        print(json.dumps({"error": error}), file=stderr)
        return EXIT_RPC_ERROR
    except ZeusdConnectionError as exc:
        print(f"zeusctl: {exc}", file=stderr)
        return EXIT_USAGE
    finally:
        client.close()
    if args.method == "discover" and not args.json and isinstance(result, dict):
        print(discover_table(result), file=stdout)
    else:
        print(json.dumps(result, indent=2), file=stdout)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
