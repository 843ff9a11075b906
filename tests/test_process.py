"""The installed ``zeusd`` process, driven like a person with socat would: raw lines in and out.

Daemons run on simulated GPUs. Readiness is the ``listening on`` log line; every reply line
is checked to be compact single-line JSON-RPC 2.0 as it is read (see process_helpers).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bad_inputs import BAD_INPUTS, INVALID_PARAMS, PARSE, BadInput
from process_helpers import (
    NOBODY,
    STOP_TIMEOUT_S,
    DaemonProcess,
    by_id,
    error_of,
    lines,
    parse_line,
    request,
    result_of,
    run_zeusd,
    run_zeusd_unprivileged,
    running_daemon,
    short_tempdir,
    start_daemon,
    write_sim_config,
)
from zeusd import __version__
from zeusd.sim.config import FAULT_FUNCTIONS

pytestmark = pytest.mark.process

DEVICE_ERROR = -32001
DEFAULT_MW = 700_000
GPU_KEYS = {"id", "name", "uuid", "pci_address", "cumulative_energy_available"}


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    """A short directory for one test's socket and files."""
    d = short_tempdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def module_dir() -> Iterator[str]:
    d = short_tempdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _sock(directory: str, name: str = "zeusd.sock") -> str:
    return os.path.join(directory, name)


def socket_probe(path: str) -> None:
    """Connect to the Unix socket at *path* and hang up (raises if nobody listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(path)


# =============================================================================================
# 1, 2. Raw lines through socat, over the Unix socket and over TCP
# =============================================================================================


@pytest.fixture(scope="module")
def uds_daemon(module_dir: str) -> Iterator[DaemonProcess]:
    """Default daemon (4 sim GPUs) on a Unix socket; tests restore what they change."""
    with running_daemon(socket_path=_sock(module_dir, "uds.sock")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def tcp_daemon() -> Iterator[DaemonProcess]:
    """Default daemon on TCP, on a port the kernel picks (reported in its log line)."""
    with running_daemon("--mode", "tcp", "--tcp-bind-address", "127.0.0.1:0") as daemon:
        yield daemon


@pytest.fixture(scope="module", params=["uds", "tcp"])
def daemon(request: pytest.FixtureRequest) -> DaemonProcess:
    result: DaemonProcess = request.getfixturevalue(f"{request.param}_daemon")
    return result


def test_listening_line_reports_the_unix_socket(uds_daemon: DaemonProcess) -> None:
    """The readiness line names the socket path the daemon listens on."""
    assert uds_daemon.address == f"unix:{uds_daemon.socket_path}"


def test_listening_line_reports_the_bound_tcp_port(tcp_daemon: DaemonProcess) -> None:
    """With port 0 the log line carries the real port, and it accepts connections."""
    assert 0 < tcp_daemon.tcp_port < 65536
    with socket.create_connection(("127.0.0.1", tcp_daemon.tcp_port), timeout=5):
        pass


def test_discover(daemon: DaemonProcess) -> None:
    """discover describes the version, the sim backend and 4 distinct GPUs."""
    [reply] = daemon.exchange(lines(request("discover", 1)))
    assert reply["id"] == 1
    result = result_of(reply)
    assert result["version"] == __version__
    assert result["backend"] == "sim"
    assert [gpu["id"] for gpu in result["gpus"]] == [0, 1, 2, 3]
    assert all(set(gpu) == GPU_KEYS for gpu in result["gpus"])
    assert len({gpu["uuid"] for gpu in result["gpus"]}) == 4
    assert len({gpu["pci_address"] for gpu in result["gpus"]}) == 4
    assert all(gpu["cumulative_energy_available"] is True for gpu in result["gpus"])
    assert result["cpus"] == []
    assert {"gpu-control", "gpu-read"} <= set(result["enabled_api_groups"])
    assert result["auth_required"] is False


def test_get_power_limit(daemon: DaemonProcess) -> None:
    """get_power_limit reads one GPU, or every GPU when gpu_ids is omitted."""
    replies = by_id(
        daemon.exchange(
            lines(
                request("gpu.get_power_limit", "one", gpu_ids=[0]),
                request("gpu.get_power_limit", "all"),
            )
        )
    )
    assert result_of(replies["one"]) == {"0": {"power_limit_mw": DEFAULT_MW}}
    every = result_of(replies["all"])
    assert set(every) == {"0", "1", "2", "3"}
    assert all(200_000 <= v["power_limit_mw"] <= DEFAULT_MW for v in every.values())


def test_set_then_get_power_limit(daemon: DaemonProcess) -> None:
    """A set is seen by the next get, and a reset restores the default (one pipelined send)."""
    replies = by_id(
        daemon.exchange(
            lines(
                request("gpu.set_power_limit", 1, gpu_ids=[1], power_limit_mw=345_000),
                request("gpu.get_power_limit", 2, gpu_ids=[1]),
                request("gpu.reset_power_limit", 3, gpu_ids=[1]),
                request("gpu.get_power_limit", 4, gpu_ids=[1]),
            )
        )
    )
    assert set(replies) == {1, 2, 3, 4}
    assert result_of(replies[1]) == {"applied": [1]}
    assert result_of(replies[2]) == {"1": {"power_limit_mw": 345_000}}
    assert result_of(replies[3]) == {"applied": [1]}
    assert result_of(replies[4]) == {"1": {"power_limit_mw": DEFAULT_MW}}


def test_batch_mixed_with_notifications(daemon: DaemonProcess) -> None:
    """A batch answers one array line holding only its requests' responses."""
    batch = [
        request("gpu.set_power_limit", None, gpu_ids=[3], power_limit_mw=456_000),
        request("gpu.get_power_limit", "a", gpu_ids=[3]),
        request("discover"),
        request("time", "b"),
        request("gpu.reset_power_limit", None, gpu_ids=[3]),
    ]
    replies = daemon.exchange(lines(batch))
    assert len(replies) == 1
    assert isinstance(replies[0], list)
    members = by_id(replies[0])
    assert set(members) == {"a", "b"}
    assert result_of(members["a"]) == {"3": {"power_limit_mw": 456_000}}
    assert isinstance(result_of(members["b"])["timestamp_ms"], int)


def test_batch_of_notifications_gets_no_reply(daemon: DaemonProcess) -> None:
    """A batch of only notifications writes nothing back, yet its work is done."""
    replies = daemon.exchange(
        lines(
            [request("gpu.set_power_limit", None, gpu_ids=[3], power_limit_mw=444_000)],
            request("gpu.get_power_limit", "after-set", gpu_ids=[3]),
            [request("gpu.reset_power_limit", None, gpu_ids=[3]), request("time")],
            request("gpu.get_power_limit", "after-reset", gpu_ids=[3]),
        )
    )
    assert all(isinstance(r, dict) for r in replies), replies
    got = by_id(replies)
    assert set(got) == {"after-set", "after-reset"}
    assert result_of(got["after-set"]) == {"3": {"power_limit_mw": 444_000}}
    assert result_of(got["after-reset"]) == {"3": {"power_limit_mw": DEFAULT_MW}}


def test_notification_then_read_observes_the_write(daemon: DaemonProcess) -> None:
    """A write sent as a notification is applied before a later read on the same connection."""
    replies = daemon.exchange(
        lines(
            request("gpu.set_power_limit", None, gpu_ids=[2], power_limit_mw=222_000),
            request("gpu.get_power_limit", 1, gpu_ids=[2]),
            request("gpu.reset_power_limit", None, gpu_ids=[2]),
            request("gpu.get_power_limit", 2, gpu_ids=[2]),
        )
    )
    got = by_id(replies)
    assert set(got) == {1, 2}
    assert result_of(got[1]) == {"2": {"power_limit_mw": 222_000}}
    assert result_of(got[2]) == {"2": {"power_limit_mw": DEFAULT_MW}}


def test_pipelining_many_lines(daemon: DaemonProcess) -> None:
    """300 lines sent in one go are each answered exactly once, matched by id."""
    methods = [
        "gpu.get_power_limit",
        "gpu.get_power",
        "time",
        "discover",
        "gpu.get_persistence_mode",
    ]
    sent = []
    for i in range(300):
        method = methods[i % len(methods)]
        if method.startswith("gpu."):
            sent.append(request(method, i, gpu_ids=[i % 4]))
        else:
            sent.append(request(method, i))
    got = by_id(daemon.exchange(lines(*sent)))
    assert sorted(got) == list(range(300))
    for i, reply in got.items():
        result = result_of(reply)
        method = methods[i % len(methods)]
        if method == "gpu.get_power_limit":
            assert result == {str(i % 4): {"power_limit_mw": DEFAULT_MW}}
        elif method == "gpu.get_power":
            assert set(result["power_mw"]) == {str(i % 4)}
            assert 0 < result["power_mw"][str(i % 4)] <= DEFAULT_MW
        elif method == "gpu.get_persistence_mode":
            assert result == {str(i % 4): {"enabled": False}}
        elif method == "time":
            assert abs(result["timestamp_ms"] - time.time() * 1000) < 60_000
        else:
            assert result["backend"] == "sim"


def test_crlf_line_endings(daemon: DaemonProcess) -> None:
    """Lines ended by CRLF are answered, and replies end with a bare LF."""
    data = lines(
        request("time", 1),
        [request("time", 2)],
        request("gpu.get_power_limit", 3, gpu_ids=[0]),
        ending=b"\r\n",
    )
    replies = daemon.exchange(data)
    assert len(replies) == 3
    assert isinstance(replies[1], list)
    assert replies[1][0]["id"] == 2
    assert result_of(replies[2]) == {"0": {"power_limit_mw": DEFAULT_MW}}
    assert {replies[0]["id"], replies[2]["id"]} == {1, 3}


def test_blank_lines_are_ignored(daemon: DaemonProcess) -> None:
    """Empty and space-only lines, LF or CRLF, get no reply at all."""
    data = (
        b"\n\n   \n"
        + lines(request("time", 1))
        + b"\r\n  \r\n"
        + lines(request("time", 2))
        + b"\n \n\n"
    )
    replies = daemon.exchange(data)
    assert sorted(r["id"] for r in replies) == [1, 2]


def test_last_line_without_newline_is_answered(daemon: DaemonProcess) -> None:
    """A final line without \\n before EOF is processed like any other."""
    data = (
        lines(request("time", 1))
        + json.dumps(request("gpu.get_power_limit", 2, gpu_ids=[0])).encode()
    )
    got = by_id(daemon.exchange(data))
    assert set(got) == {1, 2}
    assert result_of(got[2]) == {"0": {"power_limit_mw": DEFAULT_MW}}
    [only] = daemon.exchange(json.dumps(request("time", 3)).encode() + b"\r")
    assert only["id"] == 3


def test_default_socket_mode_is_666(uds_daemon: DaemonProcess) -> None:
    """Without --socket-permissions the socket file is a socket with mode 0666."""
    assert uds_daemon.socket_path is not None
    st = os.lstat(uds_daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666


# =============================================================================================
# 3. Bad input: each kind gets its exact error, and the connection stays usable
# =============================================================================================


#: The messages JSON-RPC 2.0 gives its predefined codes.
STANDARD_MESSAGES = {
    PARSE: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    INVALID_PARAMS: "Invalid params",
}


def _check_bad_reply(case: BadInput, reply: Any) -> None:
    if isinstance(case.code, tuple):
        assert isinstance(reply, list), reply
        assert [m["error"]["code"] for m in reply] == list(case.code), reply
        assert all(m["id"] is None for m in reply), reply
        return
    assert isinstance(reply, dict), reply
    error = error_of(reply, case.code)
    assert error["message"] == STANDARD_MESSAGES[case.code], reply
    assert reply["id"] == case.id, reply
    if case.code == INVALID_PARAMS:
        assert isinstance(error.get("data"), dict), reply
        assert isinstance(error["data"].get("reason"), str), reply
    for key, value in case.data.items():
        assert error["data"][key] == value, (key, reply)


def test_bad_input_table_is_large_enough() -> None:
    """The table holds well over 30 distinct kinds of bad input."""
    assert len({case.name for case in BAD_INPUTS}) == len(BAD_INPUTS) >= 30
    assert len({case.line for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_bad_input(uds_daemon: DaemonProcess, case: BadInput) -> None:
    """The bad line gets its exact error, then the same connection answers a good request."""
    with uds_daemon.connect() as conn:
        conn.send_raw(case.line + b"\n")
        _check_bad_reply(case, conn.read())
        assert conn.result("time")["timestamp_ms"] > 0


def test_all_bad_inputs_pipelined_on_one_connection(uds_daemon: DaemonProcess) -> None:
    """Every bad line sent in one go gets exactly its one reply; a final request still works."""
    with uds_daemon.connect() as conn:
        conn.send_raw(b"".join(case.line + b"\n" for case in BAD_INPUTS))
        conn.send(request("time", "last"))
        replies = [conn.read() for _ in range(len(BAD_INPUTS) + 1)]

    def key(reply: Any) -> str:
        if isinstance(reply, list):
            return json.dumps(["batch", [m["error"]["code"] for m in reply]])
        return json.dumps([reply.get("error", {}).get("code"), reply["id"]])

    expected = [
        json.dumps(["batch", list(c.code)])
        if isinstance(c.code, tuple)
        else json.dumps([c.code, c.id])
        for c in BAD_INPUTS
    ]
    expected.append(json.dumps([None, "last"]))
    assert collections.Counter(map(key, replies)) == collections.Counter(expected)


def test_c_uint_wraparound_power_limit_changes_nothing(uds_daemon: DaemonProcess) -> None:
    """2**32 + 300000 mW is -32602 (as a request) and ignored (as a notification)."""
    with uds_daemon.connect() as conn:
        before = conn.result("gpu.get_power_limit", gpu_ids=[0])
        reply = conn.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=2**32 + 300_000)
        data = error_of(reply, INVALID_PARAMS)["data"]
        assert (data["param"], data["min"], data["max"]) == ("power_limit_mw", 200_000, DEFAULT_MW)
        conn.send(request("gpu.set_power_limit", None, gpu_ids=[0], power_limit_mw=2**32 + 300_000))
        after = conn.result("gpu.get_power_limit", gpu_ids=[0])
    assert before == after == {"0": {"power_limit_mw": DEFAULT_MW}}


@pytest.mark.parametrize("req_id", ["abc", "", 0, -5, 1.5, 10**400, None])
def test_valid_ids_are_echoed_exactly(uds_daemon: DaemonProcess, req_id: Any) -> None:
    """String, zero, negative, fractional, 400-digit and null ids come back unchanged."""
    with uds_daemon.connect() as conn:
        conn.send_raw(
            json.dumps({"jsonrpc": "2.0", "method": "time", "id": req_id}).encode() + b"\n"
        )
        line = conn.read_line()
    reply = parse_line(line)
    assert reply["id"] == req_id
    assert type(reply["id"]) is type(req_id)
    if req_id == 10**400:
        assert line.endswith(b'"id":' + str(10**400).encode() + b"}")


def test_null_gpu_ids_on_a_write_touches_no_gpu(tmp_dir: str) -> None:
    """gpu_ids null on a write is -32602 and leaves every GPU's power limit as it was."""
    with running_daemon(socket_path=_sock(tmp_dir)) as daemon, daemon.connect() as conn:
        reply = conn.call("gpu.set_power_limit", gpu_ids=None, power_limit_mw=300_000)
        limits = conn.result("gpu.get_power_limit")
    assert error_of(reply, INVALID_PARAMS)["data"]["param"] == "gpu_ids"
    assert limits == {str(i): {"power_limit_mw": DEFAULT_MW} for i in range(4)}


def test_null_optional_memory_clock_is_invalid_params(uds_daemon: DaemonProcess) -> None:
    """An explicit null for the optional memory_clock_mhz is -32602, not its default."""
    with uds_daemon.connect() as conn:
        reply = conn.call("gpu.get_supported_graphics_clocks", gpu_ids=[0], memory_clock_mhz=None)
    assert error_of(reply, INVALID_PARAMS)["data"]["param"] == "memory_clock_mhz"


def test_bad_notifications_are_not_answered_but_logged(uds_daemon: DaemonProcess) -> None:
    """Notifications with an unknown method or bad params get no reply; the failure is logged."""
    with uds_daemon.connect() as conn:
        conn.send(
            request("gpu.no_such_method_x"),
            request("gpu.set_power_limit", None, gpu_ids=[0], power_limit_mw=True),
            request("time", "next"),
        )
        assert conn.read()["id"] == "next"
    uds_daemon.wait_for_log(r"gpu\.no_such_method_x")
    with uds_daemon.connect() as conn:
        assert conn.result("gpu.get_power_limit", gpu_ids=[0]) == {
            "0": {"power_limit_mw": DEFAULT_MW}
        }


def test_batch_with_valid_and_invalid_members(uds_daemon: DaemonProcess) -> None:
    """Each batch member is judged on its own: results and errors share one array."""
    batch = [request("time", 1), 5, request("gpu.nope", 2), request("gpu.nope"), {"id": 3}]
    with uds_daemon.connect() as conn:
        conn.send(batch)
        reply = conn.read()
    assert isinstance(reply, list)
    assert len(reply) == 4
    first, second, third, fourth = reply
    assert (first["id"], result_of(first)["timestamp_ms"] > 0) == (1, True)
    assert (second["id"], error_of(second, -32600)["code"]) == (None, -32600)
    assert (third["id"], error_of(third, -32601)["code"]) == (2, -32601)
    assert (fourth["id"], error_of(fourth, -32600)["code"]) == (3, -32600)


# --- too-long lines ----------------------------------------------------------------------------

MAX_LINE = 64


@pytest.fixture(scope="module")
def small_line_daemon(module_dir: str) -> Iterator[DaemonProcess]:
    """A daemon accepting lines of at most 64 bytes."""
    args = ("--max-line-bytes", str(MAX_LINE))
    with running_daemon(*args, socket_path=_sock(module_dir, "small.sock")) as daemon:
        yield daemon


def _padded_request(size: int) -> bytes:
    """A time request of exactly *size* bytes (spaces are insignificant in JSON)."""
    line = json.dumps(request("time", 1), separators=(",", ":")).encode()
    assert len(line) <= size
    return line[:-1] + b" " * (size - len(line)) + b"}"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_line_of_exactly_max_line_bytes_is_accepted(
    small_line_daemon: DaemonProcess, ending: bytes
) -> None:
    """A line exactly --max-line-bytes long (without its ending) is served normally."""
    with small_line_daemon.connect() as conn:
        conn.send_raw(_padded_request(MAX_LINE) + ending)
        assert result_of(conn.read())["timestamp_ms"] > 0
        assert conn.result("time")["timestamp_ms"] > 0


def test_too_long_line_answered_before_its_newline_then_closed(
    small_line_daemon: DaemonProcess,
) -> None:
    """Past the limit, -32700 with id null arrives without waiting for \\n; then EOF."""
    with small_line_daemon.connect() as conn:
        conn.send_raw(_padded_request(MAX_LINE + 1))  # no newline, and no half-close
        reply = conn.read()
        assert error_of(reply, PARSE)
        assert reply["id"] is None
        assert conn.read_line() == b""


def test_lines_before_a_too_long_line_are_answered(small_line_daemon: DaemonProcess) -> None:
    """Complete lines ahead of the overlong one are answered first, then the error, then EOF."""
    with small_line_daemon.connect() as conn:
        conn.send_raw(lines(request("time", "ok")) + b"x" * (4 * MAX_LINE))
        first, second = conn.read(), conn.read()
        assert first["id"] == "ok"
        assert result_of(first)["timestamp_ms"] > 0
        assert error_of(second, PARSE)
        assert second["id"] is None
        assert conn.read_line() == b""


def test_too_long_line_leaves_other_connections_alone(small_line_daemon: DaemonProcess) -> None:
    """Closing one connection for an overlong line does not disturb another."""
    with small_line_daemon.connect() as bystander, small_line_daemon.connect() as offender:
        offender.send_raw(b"[" * (MAX_LINE + 1))
        assert error_of(offender.read(), PARSE)
        assert offender.read_line() == b""
        assert bystander.result("time")["timestamp_ms"] > 0


# =============================================================================================
# 4. Every NVML error path through [gpu.faults]
# =============================================================================================

FAULT_KEYS = sorted(FAULT_FUNCTIONS)
_ERROR_NAMES = [
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_TIMEOUT",
    "NVML_ERROR_UNKNOWN",
    "NVML_ERROR_INSUFFICIENT_POWER",
    "NVML_ERROR_NOT_FOUND",
    "NVML_ERROR_IRQ_ISSUE",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    "NVML_ERROR_RESET_REQUIRED",
    "NVML_ERROR_OPERATING_SYSTEM",
    "NVML_ERROR_IN_USE",
    "NVML_ERROR_MEMORY",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_INVALID_ARGUMENT",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_CORRUPTED_INFOROM",
    "NVML_ERROR_INSUFFICIENT_SIZE",
]
#: GPU 0 is healthy; GPU i+1 has only the fault FAULT_KEYS[i]; the last GPU has no counter.
FAULTY_GPU = {key: i + 1 for i, key in enumerate(FAULT_KEYS)}
FAULT_ERROR = dict(zip(FAULT_KEYS, _ERROR_NAMES, strict=False))
NO_COUNTER_GPU = len(FAULT_KEYS) + 1
ALL_FAULT_GPUS = list(range(NO_COUNTER_GPU + 1))

#: Params that make each method (named like its fault key) valid on every GPU.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "get_power_limit": {},
    "get_power_limit_constraints": {},
    "get_persistence_mode": {},
    "get_power": {},
    "get_cumulative_energy": {},
    "get_supported_memory_clocks": {},
    "get_supported_graphics_clocks": {},
    "set_power_limit": {"power_limit_mw": 650_000},
    "reset_power_limit": {},
    "set_persistence_mode": {"enabled": True},
    "set_gpu_locked_clocks": {"min_clock_mhz": 1000, "max_clock_mhz": 1500},
    "reset_gpu_locked_clocks": {},
    "set_mem_locked_clocks": {"min_clock_mhz": 2619, "max_clock_mhz": 2619},
    "reset_mem_locked_clocks": {},
    "reset_locked_clocks": {},
}
WRITES = [m for m in METHOD_PARAMS if not m.startswith("get_")]

#: The NVML functions each method calls: its own fault functions, plus the shared ones (a
#: reset of the power limit reads the default then sets it; constraints include the default;
#: graphics clocks without memory_clock_mhz first list the memory clocks).
NVML_CALLS: dict[str, set[str]] = {m: set(FAULT_FUNCTIONS.get(m, ())) for m in METHOD_PARAMS}
NVML_CALLS["reset_power_limit"].add("nvmlDeviceSetPowerManagementLimit")
NVML_CALLS["get_power_limit_constraints"].add("nvmlDeviceGetPowerManagementDefaultLimit")
NVML_CALLS["get_supported_graphics_clocks"].add("nvmlDeviceGetSupportedMemoryClocks")


def _fault_config() -> str:
    parts = ["[[gpu]]  # 0: healthy\n"]
    for key in FAULT_KEYS:
        parts.append(f'[[gpu]]\n[gpu.faults]\n{key} = "{FAULT_ERROR[key]}"\n')
    parts.append("[[gpu]]\nenergy_counter = false\n")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def fault_daemon(module_dir: str) -> Iterator[DaemonProcess]:
    """GPU 0 healthy, one GPU per fault key, and a GPU without an energy counter."""
    config = write_sim_config(module_dir, _fault_config())
    with running_daemon("--sim-config", config, socket_path=_sock(module_dir, "f.sock")) as d:
        yield d


def _expected_failures(method: str) -> dict[str, str]:
    """GPU id (as a string) -> NVML error name, for *method* sent to every fault GPU."""
    failures = {
        str(FAULTY_GPU[key]): FAULT_ERROR[key]
        for key in FAULT_KEYS
        if NVML_CALLS[method] & set(FAULT_FUNCTIONS[key])
    }
    if method == "get_cumulative_energy":
        failures[str(NO_COUNTER_GPU)] = "NVML_ERROR_NOT_SUPPORTED"
    return failures


def test_fault_table_covers_every_fault_key() -> None:
    """Every fault key the sim knows is a method exercised here, with its own error name."""
    assert set(FAULT_FUNCTIONS) == set(METHOD_PARAMS)
    assert len(set(FAULT_ERROR.values())) == len(FAULT_KEYS)


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_fault_fails_only_the_faulty_gpu(fault_daemon: DaemonProcess, method: str) -> None:
    """On [healthy, faulty], the method is -32001 naming the configured error; healthy succeeded."""
    gpu = FAULTY_GPU[method]
    with fault_daemon.connect() as conn:
        reply = conn.call(f"gpu.{method}", gpu_ids=[0, gpu], **METHOD_PARAMS[method])
    data = error_of(reply, DEVICE_ERROR)["data"]
    assert data["succeeded"] == [0]
    assert set(data["errors"]) == {str(gpu)}
    detail = data["errors"][str(gpu)]
    assert detail["nvml_error"] == FAULT_ERROR[method]
    assert isinstance(detail["message"], str)
    assert detail["message"]


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_fault_effects_across_all_gpus(fault_daemon: DaemonProcess, method: str) -> None:
    """Sent to every GPU, exactly the GPUs whose faulty NVML functions it calls fail."""
    params = dict(METHOD_PARAMS[method])
    if method in WRITES:
        params["gpu_ids"] = ALL_FAULT_GPUS  # writes need the list; reads default to all
    with fault_daemon.connect() as conn:
        reply = conn.call(f"gpu.{method}", **params)
    expected = _expected_failures(method)
    assert str(FAULTY_GPU[method]) in expected
    data = error_of(reply, DEVICE_ERROR)["data"]
    assert {gpu: e["nvml_error"] for gpu, e in data["errors"].items()} == expected
    assert sorted(data["succeeded"]) == [g for g in ALL_FAULT_GPUS if str(g) not in expected]


def test_write_to_healthy_and_faulty_gpu_changes_the_healthy_one(
    fault_daemon: DaemonProcess,
) -> None:
    """A partly failed write really applies on the GPUs listed in succeeded."""
    set_gpu = FAULTY_GPU["set_power_limit"]
    mode_gpu = FAULTY_GPU["set_persistence_mode"]
    with fault_daemon.connect() as conn:
        reply = conn.call("gpu.set_power_limit", gpu_ids=[set_gpu, 0], power_limit_mw=432_000)
        assert error_of(reply, DEVICE_ERROR)["data"]["succeeded"] == [0]
        assert conn.result("gpu.get_power_limit", gpu_ids=[0]) == {"0": {"power_limit_mw": 432_000}}

        reply = conn.call("gpu.reset_power_limit", gpu_ids=[0, FAULTY_GPU["reset_power_limit"]])
        assert error_of(reply, DEVICE_ERROR)["data"]["succeeded"] == [0]
        assert conn.result("gpu.get_power_limit", gpu_ids=[0]) == {
            "0": {"power_limit_mw": DEFAULT_MW}
        }

        for enabled in (True, False):
            reply = conn.call("gpu.set_persistence_mode", gpu_ids=[0, mode_gpu], enabled=enabled)
            assert error_of(reply, DEVICE_ERROR)["data"]["succeeded"] == [0]
            assert conn.result("gpu.get_persistence_mode", gpu_ids=[0]) == {
                "0": {"enabled": enabled}
            }


def test_energy_counter_false(fault_daemon: DaemonProcess) -> None:
    """A GPU without a counter says so in discover and reads fail NOT_SUPPORTED."""
    with fault_daemon.connect() as conn:
        gpus = conn.result("discover")["gpus"]
        reply = conn.call("gpu.get_cumulative_energy", gpu_ids=[NO_COUNTER_GPU])
        healthy = conn.result("gpu.get_cumulative_energy", gpu_ids=[0])
    # Faults apply to requests only: the GPU with a get_cumulative_energy fault has a counter.
    assert [g["cumulative_energy_available"] for g in gpus] == [True] * NO_COUNTER_GPU + [False]
    data = error_of(reply, DEVICE_ERROR)["data"]
    assert data["succeeded"] == []
    assert data["errors"][str(NO_COUNTER_GPU)]["nvml_error"] == "NVML_ERROR_NOT_SUPPORTED"
    assert healthy["0"]["energy_mj"] > 0


def test_failed_notification_write_is_logged(fault_daemon: DaemonProcess) -> None:
    """A write notification that fails on a GPU is logged with its NVML error; others apply."""
    gpu = FAULTY_GPU["set_power_limit"]
    with fault_daemon.connect() as conn:
        conn.send(request("gpu.set_power_limit", None, gpu_ids=[0, gpu], power_limit_mw=611_000))
        assert conn.result("gpu.get_power_limit", gpu_ids=[0]) == {"0": {"power_limit_mw": 611_000}}
        conn.result("gpu.reset_power_limit", gpu_ids=[0])
    fault_daemon.wait_for_log(rf"gpu\.set_power_limit.*{FAULT_ERROR['set_power_limit']}")


# =============================================================================================
# 5. A slow GPU does not hold up another
# =============================================================================================

LATENCY_S = 1.5
FAST_S = 0.5


@pytest.fixture(scope="module")
def slow_daemon(module_dir: str) -> Iterator[DaemonProcess]:
    """GPU 0 answers every NVML call 1.5 s late; GPU 1 at once."""
    config = write_sim_config(module_dir, f"[[gpu]]\nlatency_ms = {LATENCY_S * 1000}\n\n[[gpu]]\n")
    args = ("--sim-config", config, "--num-workers", "4")
    with running_daemon(*args, socket_path=_sock(module_dir, "slow.sock")) as daemon:
        yield daemon


def test_slow_gpu_does_not_delay_another_connection(slow_daemon: DaemonProcess) -> None:
    """While a GPU-0 read is in flight, a GPU-1 read on another connection completes at once."""
    with slow_daemon.connect() as slow, slow_daemon.connect() as fast:
        sent = time.monotonic()
        slow.send(request("gpu.get_power", "slow", gpu_ids=[0]), request("time", "mark"))
        assert slow.read()["id"] == "mark"  # the GPU-0 read has been read and queued
        start = time.monotonic()
        fast.result("gpu.get_power", gpu_ids=[1])
        fast_done = time.monotonic()
        assert "result" in slow.read()
        slow_done = time.monotonic()
    assert fast_done - start < FAST_S
    assert slow_done - sent >= LATENCY_S * 0.9  # the latency really applied
    assert fast_done < slow_done


def test_slow_gpu_does_not_delay_a_later_request_of_the_same_connection(
    slow_daemon: DaemonProcess,
) -> None:
    """A GPU-1 read pipelined after a slow GPU-0 read is answered first, at once."""
    with slow_daemon.connect() as conn:
        sent = time.monotonic()
        conn.send(
            request("gpu.get_power", "slow", gpu_ids=[0]),
            request("gpu.get_power", "fast", gpu_ids=[1]),
        )
        first = conn.read()
        first_at = time.monotonic()
        second = conn.read()
        second_at = time.monotonic()
    assert (first["id"], second["id"]) == ("fast", "slow")
    assert first_at - sent < FAST_S
    assert second_at - sent >= LATENCY_S * 0.9


# =============================================================================================
# 6. Lifecycle and command line
# =============================================================================================


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_0_and_removes_the_socket(tmp_dir: str, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT stops the daemon with status 0 and removes its socket file."""
    path = _sock(tmp_dir)
    daemon = start_daemon(socket_path=path)
    try:
        assert daemon.exchange(lines(request("time", 1)))[0]["id"] == 1
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        code = daemon.stop(sig)
    assert code == 0, daemon.log
    assert not os.path.lexists(path)


def test_sigterm_answers_the_request_in_flight(tmp_dir: str) -> None:
    """On SIGTERM a request already being worked on is still answered before exit 0."""
    config = write_sim_config(tmp_dir, "[[gpu]]\nlatency_ms = 600\n")
    daemon = start_daemon("--sim-config", config, socket_path=_sock(tmp_dir))
    try:
        with daemon.connect() as conn:
            conn.send(request("gpu.get_power", "slow", gpu_ids=[0]), request("time", "mark"))
            assert conn.read()["id"] == "mark"
            daemon.proc.send_signal(signal.SIGTERM)
            reply = conn.read()
            assert reply["id"] == "slow"
            assert "0" in result_of(reply)["power_mw"]
        # It exits by itself; a second SIGTERM now could land after its handler is gone.
        code = daemon.proc.wait(STOP_TIMEOUT_S)
    finally:
        daemon.stop()
    assert code == 0, daemon.log


def test_leftover_socket_file_is_replaced(tmp_dir: str) -> None:
    """A socket file nobody listens on (a crashed daemon's) is replaced at start-up."""
    path = _sock(tmp_dir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with pytest.raises(ConnectionRefusedError):
        socket_probe(path)
    # (Inode numbers are reused at once, so a connectable socket is the proof of replacement.)
    with running_daemon(socket_path=path) as daemon:
        assert daemon.exchange(lines(request("time", 1)))[0]["id"] == 1


def test_second_daemon_on_a_live_path_refuses(tmp_dir: str) -> None:
    """A second daemon on the path of a live one exits non-zero; the first keeps serving."""
    path = _sock(tmp_dir)
    with running_daemon(socket_path=path) as first:
        inode = os.lstat(path).st_ino
        second = run_zeusd("--gpu-backend", "sim", "--socket-path", path)
        assert second.returncode != 0
        assert path in second.stderr
        assert os.lstat(path).st_ino == inode
        assert first.exchange(lines(request("time", 1)))[0]["id"] == 1
        assert first.proc.poll() is None


def test_refusal_does_not_print_the_readiness_marker(tmp_dir: str) -> None:
    """A daemon that refuses to start never prints a line a supervisor would take as ready."""
    path = _sock(tmp_dir)
    with running_daemon(socket_path=path):
        second = run_zeusd("--gpu-backend", "sim", "--socket-path", path)
    assert second.returncode != 0
    assert "listening on" not in second.stderr


def test_regular_file_at_socket_path_is_left_untouched(tmp_dir: str) -> None:
    """A regular file at --socket-path makes it exit non-zero without touching the file."""
    path = _sock(tmp_dir)
    with open(path, "w") as f:
        f.write("precious\n")
    before = os.lstat(path)
    done = run_zeusd("--gpu-backend", "sim", "--socket-path", path)
    assert done.returncode != 0
    assert path in done.stderr
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
    )
    with open(path) as f:
        assert f.read() == "precious\n"


def test_socket_permissions_600(tmp_dir: str) -> None:
    """--socket-permissions 600 gives the socket file mode 0600."""
    path = _sock(tmp_dir)
    with running_daemon("--socket-permissions", "600", socket_path=path) as daemon:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert daemon.exchange(lines(request("time", 1)))[0]["id"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_socket_uid_and_gid_set_the_owner(tmp_dir: str) -> None:
    """--socket-uid and --socket-gid make the socket file owned by that user and group."""
    path = _sock(tmp_dir)
    args = ("--socket-uid", str(NOBODY), "--socket-gid", str(NOBODY))
    with running_daemon(*args, socket_path=path):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)


def test_tcp_port_in_use_exits_nonzero(tcp_daemon: DaemonProcess) -> None:
    """A second daemon on a TCP port in use exits non-zero, naming the address."""
    address = f"127.0.0.1:{tcp_daemon.tcp_port}"
    done = run_zeusd("--gpu-backend", "sim", "--mode", "tcp", "--tcp-bind-address", address)
    assert done.returncode != 0
    assert address in done.stderr
    assert tcp_daemon.proc.poll() is None


def test_readiness_line_survives_a_quiet_log_level(tmp_dir: str) -> None:
    """With --log-level error the daemon still announces 'listening on' when ready."""
    with running_daemon("--log-level", "error", socket_path=_sock(tmp_dir)) as daemon:
        assert daemon.address == f"unix:{_sock(tmp_dir)}"
        assert daemon.exchange(lines(request("time", 1)))[0]["id"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ("--mode", "tcp", "--socket-path", "/tmp/zd-unused.sock"),
        ("--mode", "tcp", "--socket-permissions", "600"),
        ("--tcp-bind-address", "127.0.0.1:0"),
    ],
    ids=["tcp-with-socket-path", "tcp-with-socket-permissions", "uds-with-tcp-address"],
)
def test_flags_of_the_other_transport_are_usage_errors(args: tuple[str, ...]) -> None:
    """A flag that the chosen transport would ignore is a usage error (exit 2)."""
    done = run_zeusd("--gpu-backend", "sim", *args)
    assert done.returncode == 2, done.stderr
    assert "usage:" in done.stderr
    assert "listening on" not in done.stderr


def test_version_flag() -> None:
    """-V prints the version and exits 0."""
    done = run_zeusd("-V")
    assert done.returncode == 0
    assert done.stdout.strip() == f"zeusd {__version__}"


def test_python_m_zeusd_version() -> None:
    """python -m zeusd -V works like the console script."""
    done = subprocess.run(
        [sys.executable, "-m", "zeusd", "-V"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"zeusd {__version__}"


def test_help_flag() -> None:
    """--help exits 0 and documents the flags."""
    done = run_zeusd("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: zeusd")
    for flag in ("--socket-path", "--mode", "--gpu-backend", "--sim-config", "--max-line-bytes"):
        assert flag in done.stdout


def test_sim_gpus_with_sim_config_is_a_usage_error(tmp_dir: str) -> None:
    """--sim-gpus with --sim-config exits 2 (usage error) naming both flags."""
    config = write_sim_config(tmp_dir, "[[gpu]]\n")
    done = run_zeusd(
        "--gpu-backend",
        "sim",
        "--sim-gpus",
        "2",
        "--sim-config",
        config,
        "--socket-path",
        _sock(tmp_dir),
    )
    assert done.returncode == 2
    assert "--sim-gpus" in done.stderr
    assert "--sim-config" in done.stderr
    assert not os.path.lexists(_sock(tmp_dir))


def test_invalid_sim_config_exits_nonzero_with_the_reason(tmp_dir: str) -> None:
    """An unknown fault key in the sim config stops start-up with a message naming it."""
    config = write_sim_config(tmp_dir, '[[gpu]]\n[gpu.faults]\nbogus_key = "NVML_ERROR_UNKNOWN"\n')
    done = run_zeusd(
        "--gpu-backend", "sim", "--sim-config", config, "--socket-path", _sock(tmp_dir)
    )
    assert done.returncode != 0
    assert "bogus_key" in done.stderr
    assert not os.path.lexists(_sock(tmp_dir))


def test_nvml_backend_as_non_root_refuses(tmp_dir: str) -> None:
    """The nvml backend without root and without --allow-unprivileged exits with a reason."""
    path = _sock(tmp_dir)
    done, how = run_zeusd_unprivileged("--gpu-backend", "nvml", "--socket-path", path)
    assert done.returncode not in (0, 2), (how, done.returncode, done.stderr)
    assert "root" in done.stderr, (how, done.stderr)
    assert "--allow-unprivileged" in done.stderr, (how, done.stderr)
    assert "Traceback" not in done.stderr, (how, done.stderr)
    assert not os.path.lexists(path)
