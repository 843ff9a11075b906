"""The HTTP dialect's sans-I/O parts: framing, dialect choice, query params, statuses."""

from __future__ import annotations

from typing import Any

import pytest

from zeusd.core.errors import (
    AuthRequiredError,
    DeviceError,
    GroupDisabledError,
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
)
from zeusd.core.methods import build_methods
from zeusd.http.protocol import MAX_HEAD_BYTES, Failure, HttpRequest, ServerProtocol, Wait
from zeusd.http.query import flag, params_of, split_query
from zeusd.http.status import status_of
from zeusd.server.dialect import HTTP, JSONRPC, MAX_SNIFF_BYTES, choose

METHODS = build_methods()


def _feed(data: bytes, max_body: int = 1024) -> tuple[ServerProtocol, Any]:
    protocol = ServerProtocol(max_body)
    protocol.feed(data)
    return protocol, protocol.next()


def test_a_whole_request_comes_out_in_one_piece() -> None:
    """Head, query and body are handed over together once the body is complete."""
    protocol, event = _feed(b"POST /gpu/set_power_limit?gpu_ids=0 HTTP/1.1\r\nHost: x\r\n")
    assert event is Wait.NEED_DATA
    assert protocol.started
    protocol.feed(b"Content-Length: 2\r\n\r\n{")
    assert protocol.next() is Wait.NEED_DATA
    protocol.feed(b"}")
    request = protocol.next()
    assert request == HttpRequest(
        "POST",
        "/gpu/set_power_limit",
        "gpu_ids=0",
        (("host", "x"), ("content-length", "2")),
        b"{}",
    )
    assert not protocol.started


def test_keep_alive_serves_a_second_request_on_the_same_connection() -> None:
    """After a response the next request is read; pipelined bytes are kept meanwhile."""
    protocol, first = _feed(
        b"GET /time HTTP/1.1\r\nHost: x\r\n\r\nGET /discover HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert isinstance(first, HttpRequest)
    assert first.path == "/time"
    out = protocol.respond(200, b"{}", "application/json")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\n{}")
    assert protocol.next_cycle()
    second = protocol.next()
    assert isinstance(second, HttpRequest)
    assert second.path == "/discover"


def test_connection_close_ends_keep_alive() -> None:
    """A client that asks for close (or speaks HTTP/1.0) gets no second cycle."""
    for head in (
        b"GET /time HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /time HTTP/1.0\r\n\r\n",
    ):
        protocol, request = _feed(head)
        assert isinstance(request, HttpRequest)
        protocol.respond(200, b"{}", "application/json")
        assert not protocol.next_cycle()


@pytest.mark.parametrize(
    "data",
    [
        b"GET\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /x HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET  /x HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_heads_are_failures_with_400(data: bytes) -> None:
    """A request line or header that is not HTTP is a 400 Failure (then close)."""
    _, event = _feed(data)
    assert isinstance(event, Failure)
    assert event.status == 400


def test_a_head_over_16_kib_is_431() -> None:
    """Headers past MAX_HEAD_BYTES are refused without waiting for their end."""
    protocol, event = _feed(b"GET /time HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10))
    assert event == Failure(431, "Receive buffer too long")
    body = protocol.refuse(431, b"{}", "application/json")
    assert body.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in body


def test_a_whole_head_over_16_kib_is_431_too() -> None:
    """A head that arrives complete in one read is measured as well."""
    head = b"GET /time HTTP/1.1\r\nHost: x\r\nX: "
    _, event = _feed(head + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
    assert isinstance(event, Failure)
    assert event.status == 431
    _, event = _feed(head + b"a" * (MAX_HEAD_BYTES - 100) + b"\r\n\r\n")
    assert isinstance(event, HttpRequest)


def test_a_body_over_the_limit_is_413_from_its_length_or_its_bytes() -> None:
    """Content-Length past the limit fails at once; a chunked body fails when it passes it."""
    _, event = _feed(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", max_body=10)
    assert isinstance(event, Failure)
    assert event.status == 413
    protocol, event = _feed(
        b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", max_body=10
    )
    assert event is Wait.NEED_DATA
    protocol.feed(b"6\r\nabcdef\r\n")
    assert protocol.next() is Wait.NEED_DATA
    protocol.feed(b"6\r\nabcdef\r\n")
    event = protocol.next()
    assert isinstance(event, Failure)
    assert event.status == 413


def test_expect_100_continue_is_answered() -> None:
    """A client waiting for 100 Continue (curl with a big body) gets it."""
    protocol, event = _feed(
        b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert event is Wait.NEED_DATA
    assert protocol.take_output().startswith(b"HTTP/1.1 100 ")
    assert protocol.take_output() == b""


def test_head_requests_get_no_body() -> None:
    """HEAD is answered with the headers of the GET, content-length included, and no body."""
    protocol, request = _feed(b"HEAD /time HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(request, HttpRequest)
    assert request.method == "HEAD"
    out = protocol.respond(200, b'{"a":1}', "application/json")
    assert b"content-length: 7" in out
    assert out.endswith(b"\r\n\r\n")


def test_eof_between_requests_is_closed_and_inside_one_is_a_failure() -> None:
    """A client that leaves between requests just closes; one that leaves mid-head broke HTTP."""
    protocol, _ = _feed(b"")
    assert protocol.next() is Wait.CLOSED
    protocol, _ = _feed(b"GET /ti")
    protocol.feed(b"")
    assert isinstance(protocol.next(), Failure)


def test_a_stream_is_chunked() -> None:
    """An event stream's head has no length; each piece is one chunk."""
    protocol, _ = _feed(b"GET /gpu/stream_power HTTP/1.1\r\nHost: x\r\n\r\n")
    head = protocol.start_stream("text/event-stream")
    assert b"transfer-encoding: chunked" in head.lower()
    assert protocol.stream_data(b"data: 1\n\n") == b"9\r\ndata: 1\n\n\r\n"
    assert protocol.end_stream() == b"0\r\n\r\n"


# --- dialect ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "dialect"),
    [
        (b'{"jsonrpc"', JSONRPC),
        (b"  \n[", JSONRPC),
        (b"GET / HTTP/1.1", HTTP),
        (b"POST /rpc", HTTP),
        (b"HEAD /", HTTP),
        (b"\r\nGET /time", HTTP),
        (b"GE", None),
        (b"", None),
        (b"   ", None),
        (b"hello", JSONRPC),
        (b"GETX /", JSONRPC),
        (b"\x16\x03\x01", JSONRPC),
        (b" " * MAX_SNIFF_BYTES, JSONRPC),
    ],
)
def test_first_bytes_choose_the_dialect(prefix: bytes, dialect: str | None) -> None:
    """JSON opens the line protocol, a request line HTTP; the rest is JSON-RPC's parse error."""
    assert choose(prefix) == dialect


# --- query -----------------------------------------------------------------------------


def test_query_values_are_typed_by_the_method_table() -> None:
    """Comma lists, decimal integers and true/false become the JSON-RPC param values."""
    spec = METHODS["gpu.set_power_limit"]
    params = params_of(spec, split_query("gpu_ids=0,%201&power_limit_mw=300000"))
    assert params == {"gpu_ids": [0, 1], "power_limit_mw": 300000}
    spec = METHODS["cpu.get_cumulative_energy"]
    assert params_of(spec, split_query("cpu=false&dram=true")) == {"cpu": False, "dram": True}
    assert params_of(spec, split_query("cpu_ids=")) == {"cpu_ids": []}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("gpu_ids=0&power_limit_mw=3e5", "power_limit_mw"),
        ("gpu_ids=0&power_limit_mw=%C2%B3", "power_limit_mw"),
        ("gpu_ids=0&power_limit_mw=1_000", "power_limit_mw"),
        ("gpu_ids=0&power_limit_mw=", "power_limit_mw"),
        ("gpu_ids=zero&power_limit_mw=1", "gpu_ids"),
        ("gpu_ids=0,,1&power_limit_mw=1", "gpu_ids"),
        ("gpu_ids=0&gpu_ids=1&power_limit_mw=1", "gpu_ids"),
        ("gpu_ids=%FF", "query"),
    ],
)
def test_bad_query_values_name_their_param(query: str, param: str) -> None:
    """A value that does not parse is -32602 naming the param, before any GPU is touched."""
    spec = METHODS["gpu.set_power_limit"]
    with pytest.raises(InvalidParamsError) as caught:
        params_of(spec, split_query(query))
    assert caught.value.param == param


def test_unknown_keys_pass_through_for_the_core_to_refuse() -> None:
    """A key the method lacks stays a string; the core's param check refuses it."""
    assert params_of(METHODS["time"], split_query("x=1")) == {"x": "1"}


def test_block_is_a_front_end_flag() -> None:
    """block defaults to true, accepts true/false only, and is not a method param."""
    raw = split_query("gpu_ids=0&block=false")
    assert flag(raw, "block", default=True) is False
    assert raw == {"gpu_ids": "0"}
    assert flag({}, "block", default=True) is True
    with pytest.raises(InvalidParamsError):
        flag({"block": "no"}, "block", default=True)


# --- statuses --------------------------------------------------------------------------


def _device(*names: str) -> DeviceError:
    return DeviceError([], {i: {"nvml_error": n, "message": ""} for i, n in enumerate(names)})


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidParamsError("x", "bad"), 400),
        (MethodNotFoundError("x"), 404),
        (GroupDisabledError("x", "gpu-control"), 404),
        (AuthRequiredError("no"), 401),
        (PermissionDeniedError("x", "no"), 403),
        (InternalError(KeyError()), 500),
        (_device("NVML_ERROR_NO_PERMISSION", "NVML_ERROR_UNKNOWN"), 403),
        (_device("NVML_ERROR_NOT_SUPPORTED"), 400),
        (_device("NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_TIMEOUT"), 400),
        (_device("NVML_ERROR_GPU_IS_LOST"), 500),
        (_device("RAPL_READ_FAILED"), 500),
    ],
)
def test_errors_map_to_statuses_as_the_contract_says(error: Any, status: int) -> None:
    """Section 7's table, device errors by the worst NVML error among the targets."""
    assert status_of(error) == status
