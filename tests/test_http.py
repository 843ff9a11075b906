"""The HTTP dialect in-process: routes, errors and statuses, keep-alive, streams, bad input."""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
import pytest
import trio

from conftest import LineClient, SimDaemon, start_sim_daemon
from zeusd.sim import default_sim_gpus


class HttpClient:
    """Raw requests out, responses parsed by h11's client side; the connection is kept."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.CLIENT)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self._h11.our_state is h11.DONE:
            self._h11.start_next_cycle()
        fields = [("host", "zeusd"), ("content-length", str(len(body))), *(headers or {}).items()]
        data = self._h11.send(h11.Request(method=method, target=target, headers=fields))
        data += self._h11.send(h11.Data(data=body)) if body else b""
        await self.send_raw(data + self._h11.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, b""
        with trio.fail_after(timeout):
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    self._h11.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return status, headers, body

    async def json(self, method: str, target: str, **kw: Any) -> tuple[int, Any]:
        status, _, body = await self.request(method, target, **kw)
        return status, json.loads(body) if body else None

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the daemon closes the connection (reads to EOF)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _http(daemon: SimDaemon) -> HttpClient:
    return HttpClient(await trio.open_unix_socket(daemon.path))


@pytest.fixture
async def http(daemon: SimDaemon) -> Any:
    client = await _http(daemon)
    yield client
    await client.aclose()


async def test_discover_and_time_answer_with_the_jsonrpc_result(http: HttpClient) -> None:
    """200 bodies are exactly the JSON-RPC result."""
    status, found = await http.json("GET", "/discover")
    assert status == 200
    assert [gpu["id"] for gpu in found["gpus"]] == [0, 1, 2, 3]
    assert found["backend"] == "sim"
    status, now = await http.json("GET", "/time")
    assert status == 200
    assert isinstance(now["timestamp_ms"], int)


async def test_write_then_read_on_one_keep_alive_connection(
    http: HttpClient, client: LineClient
) -> None:
    """A POST write is seen by a GET and by JSON-RPC; the connection stays open between."""
    status, body = await http.json(
        "POST", "/gpu/set_power_limit?gpu_ids=0,1&power_limit_mw=300000&block=true"
    )
    assert (status, body) == (200, {"applied": [0, 1]})
    status, body = await http.json("GET", "/gpu/get_power_limit?gpu_ids=1")
    assert (status, body) == (200, {"1": {"power_limit_mw": 300000}})
    jsonrpc = await client.result("gpu.get_power_limit", {"gpu_ids": [0]})
    assert jsonrpc == {"0": {"power_limit_mw": 300000}}


async def test_every_read_route_answers(http: HttpClient) -> None:
    """Each GET route of section 7 answers 200 with its method's result shape."""
    for path, key in [
        ("/gpu/get_power", "power_mw"),
        ("/gpu/get_cumulative_energy", "0"),
        ("/gpu/get_power_limit_constraints", "0"),
        ("/gpu/get_persistence_mode", "0"),
        ("/gpu/get_supported_memory_clocks", "0"),
        ("/gpu/get_supported_graphics_clocks", "0"),
    ]:
        status, body = await http.json("GET", path)
        assert status == 200, (path, body)
        assert key in body, (path, body)


async def test_block_false_answers_at_once_and_the_write_still_happens(
    daemon: SimDaemon, http: HttpClient
) -> None:
    """block=false is a notification: 200 right away, the write runs in order after it."""
    status, _, body = await http.request(
        "POST", "/gpu/set_power_limit?gpu_ids=2&power_limit_mw=250000&block=false"
    )
    assert (status, body) == (200, b"")
    status, found = await http.json("GET", "/gpu/get_power_limit?gpu_ids=2")
    assert found == {"2": {"power_limit_mw": 250000}}


async def test_a_failed_unblocked_write_is_logged(
    daemon: SimDaemon, http: HttpClient, caplog: Any
) -> None:
    """A block=false write that fails on the device is logged like a failed notification."""
    daemon.sim.devices[3].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    with caplog.at_level(logging.WARNING):
        status, _, _ = await http.request(
            "POST", "/gpu/set_power_limit?gpu_ids=3&power_limit_mw=250000&block=false"
        )
        assert status == 200
        with trio.fail_after(5):
            while not any("gpu.set_power_limit failed" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)


@pytest.mark.parametrize(
    ("method", "target", "status", "code"),
    [
        ("GET", "/gpu/get_power_limit?gpu_ids=7", 400, -32602),
        ("GET", "/gpu/get_power_limit?gpu_ids=0,0", 400, -32602),
        ("GET", "/gpu/get_power_limit?gpu_ids=", 400, -32602),
        ("GET", "/gpu/get_power_limit?gpu_ids=x", 400, -32602),
        ("GET", "/gpu/get_power_limit?nope=1", 400, -32602),
        ("GET", "/gpu/get_power_limit?block=true", 400, -32602),
        ("POST", "/gpu/set_power_limit?gpu_ids=0&power_limit_mw=99", 400, -32602),
        ("POST", "/gpu/set_power_limit?gpu_ids=0&power_limit_mw=300000&block=maybe", 400, -32602),
        ("POST", "/gpu/set_power_limit?power_limit_mw=300000", 400, -32602),
        (
            "POST",
            "/gpu/set_gpu_locked_clocks?gpu_ids=0&min_clock_mhz=2000&max_clock_mhz=1000",
            400,
            -32602,
        ),
        ("GET", "/gpu/nothing", 404, -32601),
        ("GET", "/", 404, -32601),
        ("GET", "/gpu/set_power_limit?gpu_ids=0&power_limit_mw=300000", 405, -32600),
        ("POST", "/gpu/get_power", 405, -32600),
        ("GET", "/cpu/get_power", 404, -32004),
    ],
)
async def test_errors_have_the_contract_status_and_keep_the_connection(
    http: HttpClient, method: str, target: str, status: int, code: int
) -> None:
    """Bad params, unknown routes and wrong methods: their status, an error body, keep-alive."""
    got, body = await http.json(method, target)
    assert got == status, body
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "data"}
    assert (await http.json("GET", "/time"))[0] == 200  # still usable


async def test_405_says_what_is_allowed(http: HttpClient) -> None:
    """A wrong HTTP method names the right one in Allow."""
    status, headers, _ = await http.request("GET", "/gpu/set_power_limit")
    assert status == 405
    assert headers["allow"] == "POST"


async def test_device_errors_map_by_nvml_error(daemon: SimDaemon, http: HttpClient) -> None:
    """NO_PERMISSION is 403, NOT_SUPPORTED 400, anything else 500; the body has the details."""
    daemon.sim.devices[1].faults["set_power_limit"] = "NVML_ERROR_NO_PERMISSION"
    daemon.sim.devices[2].faults["get_power_limit"] = "NVML_ERROR_NOT_SUPPORTED"
    daemon.sim.devices[3].faults["get_power_limit"] = "NVML_ERROR_GPU_IS_LOST"
    status, body = await http.json("POST", "/gpu/set_power_limit?gpu_ids=0,1&power_limit_mw=300000")
    assert status == 403
    assert body["error"]["data"]["succeeded"] == [0]
    assert body["error"]["data"]["errors"]["1"]["nvml_error"] == "NVML_ERROR_NO_PERMISSION"
    assert (await http.json("GET", "/gpu/get_power_limit?gpu_ids=2"))[0] == 400
    assert (await http.json("GET", "/gpu/get_power_limit?gpu_ids=3"))[0] == 500


async def test_rpc_carries_jsonrpc_over_http(http: HttpClient) -> None:
    """POST /rpc answers a request or a batch with the JSON-RPC response; notifications 204."""
    request = {
        "jsonrpc": "2.0",
        "method": "gpu.get_power_limit",
        "params": {"gpu_ids": [0]},
        "id": 7,
    }
    status, body = await http.json("POST", "/rpc", body=json.dumps(request).encode())
    assert status == 200
    assert body == {"jsonrpc": "2.0", "result": {"0": {"power_limit_mw": 700000}}, "id": 7}
    batch = [
        {"jsonrpc": "2.0", "method": "time", "id": 1},
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
    ]
    status, body = await http.json("POST", "/rpc", body=json.dumps(batch).encode())
    assert [m.get("error", {}).get("code") for m in body] == [None, -32601]
    status, _, raw = await http.request("POST", "/rpc", body=b'{"jsonrpc":"2.0","method":"time"}')
    assert (status, raw) == (204, b"")
    status, body = await http.json("POST", "/rpc", body=b"{not json")
    assert status == 200
    assert body["error"]["code"] == -32700


async def test_restore_on_close_set_through_rpc_applies_to_the_connection(
    daemon: SimDaemon,
) -> None:
    """session.set_restore_on_close over /rpc undoes this connection's writes when it closes."""
    http = await _http(daemon)
    call = {
        "jsonrpc": "2.0",
        "method": "session.set_restore_on_close",
        "params": {"enabled": True},
        "id": 1,
    }
    assert (await http.json("POST", "/rpc", body=json.dumps(call).encode()))[0] == 200
    assert (await http.json("POST", "/gpu/set_power_limit?gpu_ids=0&power_limit_mw=400000"))[
        0
    ] == 200
    await http.aclose()
    with trio.fail_after(5):
        while daemon.sim.devices[0].power_limit_mw != 700000:
            await trio.sleep(0.01)


async def test_whoami_is_404_without_tokens(http: HttpClient) -> None:
    """GET /auth/whoami exists only with --token-key."""
    status, body = await http.json("GET", "/auth/whoami")
    assert status == 404
    assert body["error"]["code"] == -32601


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /time HTTP/1.1\r\nHost: x\r\nbroken\r\n\r\n", 400),
        (b"GET /time HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /time HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    ],
)
async def test_broken_http_is_answered_then_closed(
    daemon: SimDaemon, data: bytes, status: int
) -> None:
    """Malformed heads, heads over 16 KiB and bodies over --max-line-bytes: status, then close."""
    http = await _http(daemon)
    await http.send_raw(data)
    got, headers, body = await http.response()
    assert got == status
    assert headers.get("connection") == "close"
    assert "error" in json.loads(body)
    assert await http.closed()
    await http.aclose()


async def test_a_started_request_must_finish_in_time(nursery: trio.Nursery, sock_dir: str) -> None:
    """A head trickled past --client-timeout gets 408 and the connection closes."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(1), sock_dir, client_timeout=0.3)
    http = await _http(daemon)
    await http.send_raw(b"GET /time HTTP/1.1\r\nHost")
    got, _, _ = await http.response()
    assert got == 408
    assert await http.closed()
    await http.aclose()
    daemon.running.server.stop(force=True)


async def test_pipelined_requests_are_answered_in_order(http: HttpClient) -> None:
    """Three requests sent back to back get three responses, in order."""
    raw = b"".join(
        b"GET /gpu/get_power_limit?gpu_ids=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in (2, 0, 1)
    )
    await http.send_raw(raw)
    received = b""
    with trio.fail_after(5):
        while received.count(b"power_limit_mw") < 3:
            received += await http.stream.receive_some(65536)
    responses = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    got = [next(iter(json.loads(r.partition(b"\r\n\r\n")[2]))) for r in responses]
    assert got == ["2", "0", "1"]


async def test_jsonrpc_connections_are_unchanged(client: LineClient) -> None:
    """The same listener still speaks lines to a client that starts with '{'."""
    assert "timestamp_ms" in await client.result("time")
    await client.send_raw(b"hello\n")
    assert (await client.read())["error"]["code"] == -32700


async def test_gpu_stream_sends_one_event_per_gpu(nursery: trio.Nursery, sock_dir: str) -> None:
    """GET /gpu/stream_power sends data: events {timestamp_ms, gpu_id, power_mw} until closed."""
    daemon = await start_sim_daemon(nursery, default_sim_gpus(2), sock_dir, gpu_power_poll_hz=50)
    stream = await trio.open_unix_socket(daemon.path)
    await stream.send_all(b"GET /gpu/stream_power?gpu_ids=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while received.count(b"data: ") < 3:
            received += await stream.receive_some(65536)
    head, _, _ = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/event-stream" in head.lower()
    events = [json.loads(line[6:]) for line in received.split(b"\n") if line.startswith(b"data: ")]
    assert {e["gpu_id"] for e in events} == {1}
    assert all(set(e) == {"timestamp_ms", "gpu_id", "power_mw"} for e in events)
    hub = daemon.running.context.gpu_power
    assert hub is not None
    assert hub.subscriber_count == 1
    await stream.aclose()
    with trio.fail_after(5):
        while hub.subscriber_count:
            await trio.sleep(0.01)
    daemon.running.server.stop(force=True)


async def test_stream_with_bad_ids_is_400(http: HttpClient) -> None:
    """A stream of an unknown GPU, or with an unknown param, is refused before it starts."""
    assert (await http.json("GET", "/gpu/stream_power?gpu_ids=9"))[0] == 400
    assert (await http.json("GET", "/gpu/stream_power?interval_ms=10"))[0] == 400
