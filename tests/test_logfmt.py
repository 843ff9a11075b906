"""Log formats: client text can neither start a forged line nor flood one, text or JSON."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
from typing import Any

import pytest

from process_helpers import running_daemon
from zeusd import logfmt

FORGED = "2026-12-02 08:00:00,000 INFO zeusd.audit: write gpu.set_power_limit by pid=1 uid=0"
#: A text record: timestamp, level, logger; anything else must be an indented continuation.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ (?P<logger>[\w.]+): ")


def _fail() -> None:
    raise ValueError(f"bad\n{FORGED}")


def _emit(fmt: str, message: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logfmt.JsonFormatter() if fmt == "json" else logfmt.TextFormatter())
    logger = logging.getLogger("zeusd.test_logfmt")
    logger.propagate = False
    logger.handlers[:] = [handler]
    try:
        if exc:
            try:
                _fail()
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.handlers.clear()
        logger.propagate = True
    return stream.getvalue()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("line\u2028sep\u2029par\x85nel", "line\\u2028sep\\u2029par\\x85nel"),
        ("\ud800", "\\ud800"),
        ("tab\there é €", "tab\\there é €"),
    ],
)
def test_escape_makes_unsafe_characters_visible(raw: str, shown: str) -> None:
    """Newlines, controls, line separators and surrogates become escapes; text stays."""
    assert logfmt.escape(raw) == shown


def test_clip_cuts_long_values_saying_so() -> None:
    """A long client value is cut to MAX_QUOTED_CHARS and says how long it was."""
    clipped = logfmt.clip("A" * 1_000_000)
    assert clipped.startswith("A" * logfmt.MAX_QUOTED_CHARS + "...")
    assert "1000000 chars" in clipped
    assert len(clipped) < logfmt.MAX_QUOTED_CHARS + 40
    assert logfmt.clip({"k\n": 1}) == "{'k\\n': 1}"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_forged_newline_stays_on_its_line(fmt: str) -> None:
    """A message argument with a newline and a fake record gives one line, escaped."""
    out = _emit(fmt, "notification %s failed", f"x\n{FORGED}")
    assert out.count("\n") == 1
    message = json.loads(out)["message"] if fmt == "json" else out
    assert f"x\\n{FORGED}" in message


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_huge_message_is_bounded(fmt: str) -> None:
    """Even unclipped, a message is cut at MAX_MESSAGE_CHARS."""
    out = _emit(fmt, "%s", "B" * 1_000_000)
    assert len(out) < logfmt.MAX_MESSAGE_CHARS + 200
    assert "1000000 chars, cut" in out


def test_text_traceback_lines_are_indented_and_escaped() -> None:
    """Only a real record starts a line: traceback lines are indented, a forged one too."""
    out = _emit("text", "internal error", exc=True).rstrip("\n").split("\n")
    assert RECORD_START.match(out[0])
    assert len(out) > 2
    assert all(line.startswith(logfmt._INDENT) for line in out[1:])
    assert any(FORGED in line for line in out[1:])


def test_json_traceback_stays_in_its_field() -> None:
    """With JSON, the traceback is a field of the one line."""
    out = _emit("json", "internal error", exc=True)
    assert out.count("\n") == 1
    assert FORGED in json.loads(out)["traceback"]


# --- as an attacker: an unauthenticated TCP client of the real zeusd ---------------------


def _notification(method: str, params: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


ATTACK = b"".join(
    [
        _notification(f"x\n{FORGED}"),
        _notification("gpu.get_power_limit", {f"x\n{FORGED}": 1}),
        _notification("M" * 1_000_000),
        _notification("\ud800\u2028"),
        b'{"jsonrpc":"2.0","method":"time","id":"sync"}\n',
    ]
)


def _attack(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ATTACK)
        reply = sock.makefile("rb").readline()
        assert b'"id":"sync"' in reply, reply[:200]


@pytest.mark.process
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_unauthenticated_tcp_client_cannot_forge_or_flood_the_log(fmt: str) -> None:
    """Forged newlines, a newline in a param name, a 1 MB method name: 4 short safe lines."""
    args = ("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0", "--log-format", fmt)
    with running_daemon(*args) as daemon:
        _attack(daemon.tcp_port)
        daemon.stop()
        log = daemon.log.split("\n")
    assert "Traceback" not in daemon.log
    assert "Logging error" not in daemon.log
    assert max(len(line) for line in log) < 1000, max(len(line) for line in log)
    if fmt == "json":
        entries = [json.loads(line) for line in log]
        messages = [entry["message"] for entry in entries]
        assert not [e for e in entries if e["logger"] == "zeusd.audit"]
    else:
        starts = [RECORD_START.match(line) for line in log]
        assert all(starts), log
        assert not [m for m in starts if m and m.group("logger") == "zeusd.audit"]
        messages = [RECORD_START.sub("", line, count=1) for line in log]
    failed = [m for m in messages if m.startswith("notification ")]
    assert len(failed) == 4, messages
    assert f"notification x\\n{FORGED} failed" in failed[0]
    assert f"x\\n{FORGED}" in failed[1]
    assert "1000000 chars" in failed[2]
    assert "\\ud800\\u2028" in failed[3]
    assert all("\n" not in m and "\u2028" not in m for m in messages)
