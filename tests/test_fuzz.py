"""Property-based fuzzing of the protocol: random bytes, random JSON, random JSON-RPC shapes.

Whatever arrives, the daemon must not crash, must not hang, must write only compact
single-line JSON-RPC 2.0 responses, and must still answer a good request afterwards. Most
cases run through the real dispatcher and line framing in-process (fast); a share goes to
the real ``zeusd`` process over its socket. Together they are over 10,000 cases per run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from process_helpers import DaemonProcess, parse_line, parse_output, short_tempdir, start_daemon
from zeusd.core.context import Context
from zeusd.core.gpu_commands import GpuTable
from zeusd.core.methods import build_methods
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.core.spec import API_GROUPS
from zeusd.gpu.backend import NvmlBackend
from zeusd.gpu.lanes import GpuLanes
from zeusd.rpc.dispatch import Dispatcher
from zeusd.rpc.framing import LineBuffer
from zeusd.sim import SimNvml, default_sim_gpus

IN_PROCESS_CASES = 3400  # per strategy; three strategies
PROCESS_CASES = 300
MAX_LINE_BYTES = 512
KEY = b"fuzz-key-fuzz-key-fuzz-key-fuzz!"

METHODS = build_methods()
PARAM_NAMES = sorted({p.name for spec in METHODS.values() for p in spec.params})
GOOD = b'{"jsonrpc":"2.0","method":"time","id":"good"}'

_FUZZ: dict[str, Any] = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
plausible = (
    st.lists(st.integers(-2, 5), max_size=5)
    | st.integers(0, 800_000)
    | st.sampled_from([True, False, 2619, 1980, 210, 2**32, 300000.0, "0", [], {}])
    | json_values
)
params = st.dictionaries(st.sampled_from([*PARAM_NAMES, "extra"]), plausible, max_size=4) | (
    st.lists(plausible, max_size=3)
)
request_ids = st.none() | st.integers() | st.text(max_size=6) | st.floats() | st.booleans()


@st.composite
def rpc_objects(draw: st.DrawFn) -> Any:
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        obj["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2.0, None]))
    if draw(st.integers(0, 9)):
        obj["method"] = draw(st.sampled_from(sorted(METHODS)) | st.text(max_size=12) | json_scalars)
    if draw(st.booleans()):
        obj["params"] = draw(params | json_scalars)
    if draw(st.integers(0, 3)):
        obj["id"] = draw(request_ids)
    if not draw(st.integers(0, 19)):
        obj[draw(st.text(max_size=5))] = draw(json_scalars)
    return obj


#: Who sends it: an unauthenticated TCP client (None), root, an allowed writer, a reader.
callers = st.sampled_from([None, 0, 4242, 1000])
rpc_messages = rpc_objects() | st.lists(rpc_objects() | json_scalars, max_size=5)


def _dump(value: Any) -> bytes:
    # allow_nan: NaN/Infinity tokens are exactly the kind of not-quite-JSON to throw at it.
    return json.dumps(value, allow_nan=True).encode()


# --- in-process: the dispatcher behind the real line framing ----------------------------

_backend = NvmlBackend.open(SimNvml(default_sim_gpus(4)), name="sim")


async def _serve_bytes(data: bytes, token_transports: frozenset[str], uid: int) -> list[bytes]:
    lanes = GpuLanes(len(_backend.devices), trio.CapacityLimiter(4))
    context = Context(
        version="fuzz",
        backend="sim",
        gpus=GpuTable(_backend.infos),
        devices=_backend.devices,
        lanes=lanes,
        policy=Policy(
            enabled_groups=API_GROUPS,
            token_key=KEY,
            token_transports=token_transports,
            control_uids=frozenset({4242}),
        ),
    )
    dispatcher = Dispatcher(METHODS, context, max_batch=4)
    if token_transports:
        session = Session(transport="tcp")
    else:  # root, a user allowed to write, or one who may only read
        session = Session(transport="uds", pid=1, uid=uid, gid=uid, groups=(uid,))
    out: list[bytes] = []
    buffer = LineBuffer(MAX_LINE_BYTES)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        with trio.fail_after(10):  # never hangs
            pending = buffer.feed(data)
            last = None if buffer.overflowed else buffer.close()
            for line in [*pending, *([last] if last is not None else []), GOOD]:
                reply = dispatcher.handle_line(line, session)
                if reply is not None and not isinstance(reply, bytes):
                    reply = await reply
                if reply is not None:
                    out.append(reply)
        lanes.close()
    return out


def _check_in_process(data: bytes, who: int | None) -> None:
    """*who*: None for a TCP connection that must authenticate, else the peer's uid."""
    locked = frozenset({"tcp"}) if who is None else frozenset()
    replies = trio.run(_serve_bytes, data, locked, who or 0)
    assert replies, "the good request was not answered"
    for reply in replies:
        assert reply.endswith(b"\n")
        parse_line(reply[:-1])
    last = json.loads(replies[-1])
    assert last["id"] == "good"
    assert "result" in last, last


@settings(max_examples=IN_PROCESS_CASES, **_FUZZ)
@given(data=st.binary(max_size=600), who=callers)
def test_random_bytes(data: bytes, who: int | None) -> None:
    """Arbitrary bytes, line breaks included, only ever get valid JSON-RPC replies."""
    _check_in_process(data, who)


@settings(max_examples=IN_PROCESS_CASES, **_FUZZ)
@given(value=json_values, who=callers)
def test_random_json(value: Any, who: int | None) -> None:
    """Any JSON text (and NaN/Infinity) is answered with valid JSON-RPC."""
    _check_in_process(_dump(value) + b"\n", who)


@settings(max_examples=IN_PROCESS_CASES, **_FUZZ)
@given(messages=st.lists(rpc_messages, min_size=1, max_size=3), who=callers)
def test_random_jsonrpc_shapes(messages: list[Any], who: int | None) -> None:
    """Near-miss requests and batches to real methods with odd params answer validly."""
    _check_in_process(b"\n".join(_dump(m) for m in messages) + b"\n", who)


# --- the real process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_daemon() -> Iterator[DaemonProcess]:
    directory = short_tempdir()
    key = os.path.join(directory, "key")
    with open(key, "wb") as f:
        f.write(KEY)
    os.chmod(key, 0o600)
    daemon = start_daemon(
        "--max-line-bytes", str(MAX_LINE_BYTES), "--max-batch", "4", "--token-key", key,
        "--client-timeout", "5", "--sim-gpus", "2",
        socket_path=os.path.join(directory, "zeusd.sock"),
    )  # fmt: skip
    yield daemon
    assert daemon.stop() == 0, daemon.log
    shutil.rmtree(directory, ignore_errors=True)


def _exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)  # never hangs
        sock.connect(path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up first (an overlong line): what it said before still counts
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.mark.process
@settings(max_examples=PROCESS_CASES, **_FUZZ)
@given(
    data=st.binary(max_size=400)
    | st.lists(rpc_messages, min_size=1, max_size=3).map(
        lambda ms: b"\n".join(_dump(m) for m in ms) + b"\n"
    )
)
def test_real_process_survives(fuzzed_daemon: DaemonProcess, data: bytes) -> None:
    """The zeusd process answers only valid JSON-RPC, and keeps answering."""
    path = fuzzed_daemon.socket_path
    assert path is not None
    parse_output(_exchange(path, data))
    assert fuzzed_daemon.proc.poll() is None, fuzzed_daemon.log
    replies = parse_output(_exchange(path, GOOD + b"\n"))
    assert [r["id"] for r in replies] == ["good"]
    assert "Traceback" not in fuzzed_daemon.log
