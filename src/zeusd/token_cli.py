"""``zeusd token issue``: print a signed token for a TCP client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zeusd import tokens
from zeusd.core.spec import API_GROUPS


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in API_GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown API group {unknown[0]!r} (known: {', '.join(API_GROUPS)})"
        )
    if not groups:
        raise argparse.ArgumentTypeError("give at least one API group")
    return list(dict.fromkeys(groups))


def _expiry(text: str) -> int | None:
    try:
        return tokens.parse_expiry(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeusd token", description="Manage session tokens for TCP clients."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="print a new signed token on stdout")
    issue.add_argument("--token-key", required=True, metavar="FILE", help="the daemon's key")
    issue.add_argument("--subject", required=True, help="who the token is for (logged)")
    issue.add_argument(
        "--scopes",
        required=True,
        type=_groups,
        help=f"comma list of API groups it may call ({','.join(API_GROUPS)})",
    )
    issue.add_argument(
        "--expires", required=True, type=_expiry, help="lifetime: e.g. 30m, 1h, 7d, or never"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.subject.strip():
        print("zeusd token: --subject must not be empty", file=sys.stderr)
        return 2
    try:
        key = tokens.load_key(args.token_key)
    except tokens.TokenKeyError as exc:
        print(f"zeusd token: {exc}", file=sys.stderr)
        return 1
    print(tokens.issue(key, args.subject, args.scopes, args.expires))
    return 0
