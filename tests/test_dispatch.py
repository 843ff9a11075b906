"""The dispatcher as a pure unit: lines in, response bytes out, nothing queued when invalid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zeusd.core.context import Context
from zeusd.core.gpu_commands import GpuTable
from zeusd.core.methods import MethodSpec, build_methods
from zeusd.core.policy import Policy
from zeusd.core.session import Session
from zeusd.gpu.backend import NvmlBackend
from zeusd.rpc.dispatch import Dispatcher, encode, notification_line
from zeusd.sim import SimNvml, default_sim_gpus
from zeusd.stream.outbox import PowerSample

SESSION = Session(transport="uds")


class RecordingLanes:
    """Stands in for GpuLanes and records what would have been queued."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, work: Any, **kwargs: Any) -> Any:
        self.submitted.extend(gpu for gpu, _ in work)
        raise AssertionError("these tests must not reach a GPU")


def _dispatcher(
    extra: MethodSpec | None = None, groups: tuple[str, ...] = ("gpu-control", "gpu-read")
) -> tuple[Dispatcher, RecordingLanes]:
    backend = NvmlBackend.open(SimNvml(default_sim_gpus(2)), name="sim")
    lanes = RecordingLanes()
    context = Context(
        version="test",
        backend="sim",
        gpus=GpuTable(backend.infos),
        devices=backend.devices,
        lanes=lanes,  # type: ignore[arg-type]
        policy=Policy(enabled_groups=groups),
    )
    methods = dict(build_methods())
    if extra is not None:
        methods[extra.name] = extra
    return Dispatcher(methods, context), lanes


def _reply(line: bytes | str, extra: MethodSpec | None = None) -> Any:
    dispatcher, lanes = _dispatcher(extra)
    data = dispatcher.handle_line(line.encode() if isinstance(line, str) else line, SESSION)
    assert lanes.submitted == []
    if data is None:
        return None
    assert isinstance(data, bytes), "expected an immediate reply"
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1, "one response, one line"
    return json.loads(data)


def test_blank_lines_are_ignored() -> None:
    """Empty and whitespace-only lines produce no reply."""
    assert _reply("") is None
    assert _reply("  \t ") is None


def test_sync_method_answers_immediately() -> None:
    """time needs no GPU, so the reply is ready without awaiting."""
    reply = _reply('{"jsonrpc":"2.0","method":"time","id":"t"}')
    assert reply["id"] == "t"
    assert isinstance(reply["result"]["timestamp_ms"], int)


def test_responses_are_compact() -> None:
    """Replies use no spaces after separators (one compact JSON text per line)."""
    dispatcher, _ = _dispatcher()
    data = dispatcher.handle_line(b'{"jsonrpc": "2.0", "method": "nope", "id": 1}', SESSION)
    assert isinstance(data, bytes)
    assert b'{"jsonrpc":"2.0","error":{"code":-32601' in data


@pytest.mark.parametrize(
    ("line", "code", "id"),
    [
        ("{", -32700, None),
        ('{"jsonrpc":"2.0","method":"time","id":NaN}', -32700, None),
        (b"\xc3\x28", -32700, None),
        ("42", -32600, None),
        ("[]", -32600, None),
        ('{"jsonrpc":"2.0","method":"time","id":true}', -32600, None),
        ('{"jsonrpc":"2.0","method":"time","id":7,"extra":1}', -32600, 7),
        ('{"jsonrpc":"2.0","method":"time","id":7,"params":"x"}', -32600, 7),
        ('{"method":"time","id":7}', -32600, 7),
        ('{"jsonrpc":"2.0","method":"nope","id":7}', -32601, 7),
        ('{"jsonrpc":"2.0","method":"time","id":7,"params":[]}', -32602, 7),
        ('{"jsonrpc":"2.0","method":"time","id":7,"params":{"x":1}}', -32602, 7),
    ],
)
def test_error_codes(line: str | bytes, code: int, id: Any) -> None:
    """Each kind of bad line gets its JSON-RPC code and the right id."""
    reply = _reply(line)
    assert reply["error"]["code"] == code
    assert reply["id"] == id


def test_invalid_write_queues_nothing() -> None:
    """A write with one bad value is refused before any GPU work is queued."""
    reply = _reply(
        '{"jsonrpc":"2.0","method":"gpu.set_power_limit","id":1,'
        '"params":{"gpu_ids":[0,1],"power_limit_mw":100}}'
    )
    assert reply["error"]["data"]["param"] == "power_limit_mw"


def test_missing_and_unknown_params_name_the_param() -> None:
    """The data of -32602 says which param and why."""
    missing = _reply('{"jsonrpc":"2.0","method":"gpu.set_power_limit","id":1,"params":{}}')
    assert missing["error"]["data"] == {
        "param": "gpu_ids",
        "reason": "missing required param 'gpu_ids'",
    }
    unknown = _reply('{"jsonrpc":"2.0","method":"gpu.get_power","id":1,"params":{"gpu_idz":[0]}}')
    assert unknown["error"]["data"]["param"] == "gpu_idz"
    assert "accepted: gpu_ids" in unknown["error"]["data"]["reason"]


def test_batch_of_errors_is_one_array_line() -> None:
    """A batch of invalid members answers one array with one error per member."""
    reply = _reply('[1, {"jsonrpc":"2.0","method":"nope","id":"x"}, {"jsonrpc":"2.0"}]')
    assert [r["error"]["code"] for r in reply] == [-32600, -32601, -32600]
    assert [r["id"] for r in reply] == [None, "x", None]


def test_notification_errors_are_not_answered() -> None:
    """An unknown method sent as a notification gets no reply."""
    assert _reply('{"jsonrpc":"2.0","method":"nope"}') is None


def test_unexpected_exception_is_internal_error(caplog: Any) -> None:
    """A handler bug becomes -32603 with the traceback in the log, not a crash."""

    def broken(ctx: Any, session: Any) -> Any:
        raise KeyError("oops")

    spec = MethodSpec("broken", "always fails", None, (), {}, broken, touches_devices=False)
    reply = _reply('{"jsonrpc":"2.0","method":"broken","id":3}', spec)
    assert reply["error"]["code"] == -32603
    assert reply["id"] == 3
    assert any(r.exc_info for r in caplog.records)


def test_unserializable_result_is_internal_error() -> None:
    """A result JSON cannot carry becomes -32603 instead of a broken line."""
    spec = MethodSpec(
        "weird", "returns a set", None, (), {}, lambda ctx, session: {1, 2}, touches_devices=False
    )
    reply = _reply('{"jsonrpc":"2.0","method":"weird","id":4}', spec)
    assert reply["error"]["code"] == -32603


def test_method_of_disabled_group_is_refused_first() -> None:
    """A method whose group is not enabled is -32004, before its params are checked."""
    dispatcher, lanes = _dispatcher(groups=("gpu-read",))
    data = dispatcher.handle_line(
        b'{"jsonrpc":"2.0","method":"gpu.set_power_limit","id":1,"params":{"bogus":1}}', SESSION
    )
    assert isinstance(data, bytes)
    reply = json.loads(data)
    assert reply["error"]["code"] == -32004
    assert reply["error"]["data"]["group"] == "gpu-control"
    assert lanes.submitted == []
    ok = dispatcher.handle_line(b'{"jsonrpc":"2.0","method":"time","id":2}', SESSION)
    assert isinstance(ok, bytes)
    assert b'"result"' in ok


def test_notification_line_is_the_encoded_notification() -> None:
    """A line made from its parts is exactly the compact JSON of the notification object."""
    shared = {"0": 250000, "1": 300000}
    samples = [
        PowerSample("gpu", 'sub "one" é', 1764700000000, shared),
        PowerSample("gpu", "two", 1764700000001, shared),
        PowerSample("cpu", "three", 5, {"0": {"cpu_mw": 1, "dram_mw": None}}),
    ]
    for sample in samples:
        params = {
            "subscription": sample.subscription,
            "timestamp_ms": sample.timestamp_ms,
            "power_mw": sample.power_mw,
        }
        expected = encode({"jsonrpc": "2.0", "method": f"{sample.kind}.power", "params": params})
        assert notification_line(sample) == expected


def test_steps_pause_between_batch_members_and_nowhere_else() -> None:
    """steps() does a batch one member at a time (a pause between two), a single request in
    one go, and ends with what handle() gives."""
    dispatcher, _ = _dispatcher()
    members = [{"jsonrpc": "2.0", "method": "time", "id": n} for n in range(3)]
    assert _run(dispatcher.steps(json.dumps(members).encode(), SESSION)) == (2, [0, 1, 2])
    assert _run(dispatcher.steps(json.dumps(members[0]).encode(), SESSION)) == (0, 0)


def _run(steps: Any) -> tuple[int, Any]:
    """How often *steps* paused, and the id(s) of what it ended with."""
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value = done.value
            ids = [m["id"] for m in value] if isinstance(value, list) else value["id"]
            return pauses, ids
        pauses += 1
