"""Bad request lines and the exact error each must get, for a daemon with 4 default sim GPUs.

Every entry is one raw line (without its ``\\n``). ``code`` is the error code of the single
reply object, or a tuple: the line is a batch answered by one array of errors with these
codes. ``id`` is the id the reply must carry (None: JSON null). ``data`` lists members that
``error.data`` must hold (for -32602 always at least ``param``).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

PARSE = -32700
INVALID_REQUEST = -32600
NOT_FOUND = -32601
INVALID_PARAMS = -32602

UINT32_MAX = 2**32 - 1
MIN_MW, MAX_MW = 200_000, 700_000  # the default sim GPU's power limit range


@attrs.frozen
class BadInput:
    name: str
    line: bytes
    code: int | tuple[int, ...]
    id: Any = None
    data: dict[str, Any] = attrs.field(factory=dict)


def _raw(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _req(method: str, params: Any = None, id: Any = 1) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return _raw(message)


def _params(name: str, method: str, params: Any, param: str, **data: Any) -> BadInput:
    """A request whose params are wrong: -32602 naming *param*, with id 1."""
    return BadInput(name, _req(method, params), INVALID_PARAMS, 1, {"param": param, **data})


def _set_limit(value: Any) -> Any:
    return {"gpu_ids": [0], "power_limit_mw": value}


def _clocks(low: Any, high: Any) -> Any:
    return {"gpu_ids": [0], "min_clock_mhz": low, "max_clock_mhz": high}


_GOOD = _req("discover")
_DISCOVER = b'{"jsonrpc":"2.0","method":"discover","id":1'  # completed per case below
_SET = "gpu.set_power_limit"
_GET = "gpu.get_power_limit"
_GPU_CLOCKS = "gpu.set_gpu_locked_clocks"
_MEM_CLOCKS = "gpu.set_mem_locked_clocks"
_PERSIST = "gpu.set_persistence_mode"
_GRAPHICS = "gpu.get_supported_graphics_clocks"
_LIMIT_RANGE = {"min": MIN_MW, "max": MAX_MW}

BAD_INPUTS: tuple[BadInput, ...] = (
    # --- not JSON / not UTF-8: -32700, id null -------------------------------------------
    BadInput("not_json", b"hello", PARSE),
    BadInput("truncated_json", _GOOD[:-1], PARSE),
    BadInput("invalid_utf8", _DISCOVER[:-1] + b'"\xff\xfe"}', PARSE),
    BadInput("utf8_encoded_surrogate", _DISCOVER[:-1] + b'"\xed\xa0\x80"}', PARSE),
    BadInput("utf16_with_bom", _GOOD.decode().encode("utf-16"), PARSE),
    BadInput("utf16le_without_bom", _GOOD.decode().encode("utf-16-le"), PARSE),
    BadInput("nan_literal", _req(_SET, _set_limit(0)).replace(b":0}", b":NaN}"), PARSE),
    BadInput("infinity_literal", _req(_SET, _set_limit(0)).replace(b":0}", b":Infinity}"), PARSE),
    BadInput("minus_infinity", _req(_SET, _set_limit(0)).replace(b":0}", b":-Infinity}"), PARSE),
    BadInput("trailing_garbage", _GOOD + b" x", PARSE),
    BadInput("two_objects_on_one_line", _GOOD + _GOOD, PARSE),
    BadInput("trailing_comma", _DISCOVER + b",}", PARSE),
    BadInput("single_quotes", b"{'jsonrpc': '2.0', 'method': 'discover', 'id': 1}", PARSE),
    BadInput("nul_byte", b"\x00", PARSE),
    BadInput("deeply_nested_arrays", b"[" * 100_000, PARSE),
    # Valid JSON, but nested deeper than any parser should follow.
    BadInput(
        "deeply_nested_params",
        _DISCOVER + b',"params":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        PARSE,
    ),
    # Python refuses to turn more than 4300 digits into an int: the line cannot be parsed.
    BadInput("id_with_5000_digits", _DISCOVER[:-1] + b"9" * 5000 + b"}", PARSE),
    # --- not a request object: -32600 --------------------------------------------------------
    BadInput("scalar_number", b"42", INVALID_REQUEST),
    BadInput("scalar_string", b'"discover"', INVALID_REQUEST),
    BadInput("scalar_null", b"null", INVALID_REQUEST),
    BadInput("scalar_true", b"true", INVALID_REQUEST),
    BadInput("empty_batch", b"[]", INVALID_REQUEST),
    BadInput("batch_of_non_objects", b"[1,2]", (INVALID_REQUEST, INVALID_REQUEST)),
    BadInput("batch_holding_empty_batch", b"[[]]", (INVALID_REQUEST,)),
    BadInput("missing_jsonrpc", _raw({"method": "discover", "id": 1}), INVALID_REQUEST, 1),
    BadInput("missing_jsonrpc_and_id", _raw({"method": "discover"}), INVALID_REQUEST),
    BadInput("jsonrpc_1_0", _req("discover").replace(b'"2.0"', b'"1.0"'), INVALID_REQUEST, 1),
    BadInput("jsonrpc_as_number", _req("discover").replace(b'"2.0"', b"2.0"), INVALID_REQUEST, 1),
    BadInput(
        "method_not_a_string", _raw({"jsonrpc": "2.0", "method": 1, "id": 1}), INVALID_REQUEST, 1
    ),
    BadInput("method_null", _raw({"jsonrpc": "2.0", "method": None, "id": 1}), INVALID_REQUEST, 1),
    BadInput("method_missing", _raw({"jsonrpc": "2.0", "id": 1}), INVALID_REQUEST, 1),
    BadInput(
        "unknown_member",
        _raw({"jsonrpc": "2.0", "method": "discover", "id": 1, "foo": 1}),
        INVALID_REQUEST,
        1,
    ),
    BadInput("params_as_string", _req("discover", "all"), INVALID_REQUEST, 1),
    BadInput(
        "params_null",
        _raw({"jsonrpc": "2.0", "method": "discover", "params": None, "id": 1}),
        INVALID_REQUEST,
        1,
    ),
    BadInput("id_true", _req("discover", id=True), INVALID_REQUEST),
    BadInput("id_object", _req("discover", id={"n": 1}), INVALID_REQUEST),
    BadInput("id_array", _req("discover", id=[1]), INVALID_REQUEST),
    # 1e400 parses as an infinite float, which no JSON reply could carry.
    BadInput("id_overflows_to_infinity", _DISCOVER[:-1] + b"1e400}", INVALID_REQUEST),
    BadInput("id_overflows_to_minus_infinity", _DISCOVER[:-1] + b"-1e400}", INVALID_REQUEST),
    # --- unknown method: -32601 with the request's id ----------------------------------------
    BadInput("unknown_method", _req("gpu.nope", id=7), NOT_FOUND, 7),
    BadInput("empty_method", _req("", id="e"), NOT_FOUND, "e"),
    BadInput("method_wrong_case", _req("Discover", id=8), NOT_FOUND, 8),
    BadInput("method_lone_surrogate", _req("\ud800", id=9), NOT_FOUND, 9),
    # --- invalid params: -32602 naming the param -----------------------------------------------
    _params("params_as_array", _GET, [[0]], "params"),
    _params("unknown_param", _GET, {"gpu_id": [0]}, "gpu_id"),
    _params("unknown_param_on_discover", "discover", {"verbose": True}, "verbose"),
    _params("missing_power_limit", _SET, {"gpu_ids": [0]}, "power_limit_mw"),
    _params("missing_gpu_ids_on_write", _SET, {"power_limit_mw": 300_000}, "gpu_ids"),
    _params("gpu_ids_a_string", _GET, {"gpu_ids": "0"}, "gpu_ids"),
    _params("gpu_ids_an_int", _GET, {"gpu_ids": 0}, "gpu_ids"),
    _params("gpu_ids_an_object", _GET, {"gpu_ids": {"0": True}}, "gpu_ids"),
    _params("empty_gpu_ids_on_read", _GET, {"gpu_ids": []}, "gpu_ids"),
    # null is a value, not "omitted": on a write it must never mean "every GPU".
    _params("gpu_ids_null_on_read", _GET, {"gpu_ids": None}, "gpu_ids"),
    _params("gpu_ids_null_on_write", _SET, {"gpu_ids": None, "power_limit_mw": 300_000}, "gpu_ids"),
    _params("empty_gpu_ids_on_write", _SET, {"gpu_ids": [], "power_limit_mw": 300_000}, "gpu_ids"),
    _params("duplicate_gpu_id", _GET, {"gpu_ids": [1, 1]}, "gpu_ids"),
    _params("unknown_gpu_id", _GET, {"gpu_ids": [99]}, "gpu_ids"),
    _params("gpu_id_2_pow_32", _GET, {"gpu_ids": [2**32]}, "gpu_ids"),
    _params("negative_gpu_id", _GET, {"gpu_ids": [-1]}, "gpu_ids"),
    _params("bool_gpu_id", _GET, {"gpu_ids": [True]}, "gpu_ids"),
    _params("float_gpu_id", _GET, {"gpu_ids": [0.0]}, "gpu_ids"),
    _params("string_gpu_id", _GET, {"gpu_ids": ["0"]}, "gpu_ids"),
    _params("nested_gpu_id", _GET, {"gpu_ids": [[0]]}, "gpu_ids"),
    _params("float_power_limit", _SET, _set_limit(300000.0), "power_limit_mw"),
    _params("bool_power_limit", _SET, _set_limit(True), "power_limit_mw"),
    _params("string_power_limit", _SET, _set_limit("300000"), "power_limit_mw"),
    _params("null_power_limit", _SET, _set_limit(None), "power_limit_mw"),
    _params(
        "power_limit_below_min", _SET, _set_limit(MIN_MW - 1), "power_limit_mw", **_LIMIT_RANGE
    ),
    _params(
        "power_limit_above_max", _SET, _set_limit(MAX_MW + 1), "power_limit_mw", **_LIMIT_RANGE
    ),
    _params("power_limit_negative", _SET, _set_limit(-1), "power_limit_mw", **_LIMIT_RANGE),
    # 2**32 + 300000 would be 300000 once squeezed into NVML's c_uint.
    _params(
        "power_limit_c_uint_wraparound",
        _SET,
        _set_limit(2**32 + 300_000),
        "power_limit_mw",
        **_LIMIT_RANGE,
    ),
    _params("clock_zero", _GPU_CLOCKS, _clocks(0, 1500), "min_clock_mhz", min=1, max=UINT32_MAX),
    _params("clock_2_pow_32", _GPU_CLOCKS, _clocks(1000, 2**32), "max_clock_mhz", max=UINT32_MAX),
    _params("clock_negative", _GPU_CLOCKS, _clocks(-1000, 1500), "min_clock_mhz"),
    _params("mem_clock_2_pow_32", _MEM_CLOCKS, _clocks(2**32, 2**32), "min_clock_mhz"),
    _params("float_clock", _GPU_CLOCKS, _clocks(1000.0, 1500), "min_clock_mhz"),
    _params("min_clock_above_max", _GPU_CLOCKS, _clocks(1500, 1000), "max_clock_mhz", min=1500),
    _params(
        "missing_max_clock", _GPU_CLOCKS, {"gpu_ids": [0], "min_clock_mhz": 1}, "max_clock_mhz"
    ),
    _params("enabled_as_1", _PERSIST, {"gpu_ids": [0], "enabled": 1}, "enabled"),
    _params("enabled_as_string", _PERSIST, {"gpu_ids": [0], "enabled": "true"}, "enabled"),
    _params("enabled_null", _PERSIST, {"gpu_ids": [0], "enabled": None}, "enabled"),
    _params("unsupported_memory_clock", _GRAPHICS, {"memory_clock_mhz": 1234}, "memory_clock_mhz"),
    _params("memory_clock_zero", _GRAPHICS, {"memory_clock_mhz": 0}, "memory_clock_mhz"),
    _params("memory_clock_bool", _GRAPHICS, {"memory_clock_mhz": True}, "memory_clock_mhz"),
    _params(
        "unknown_param_on_reset", "gpu.reset_power_limit", _set_limit(300_000), "power_limit_mw"
    ),
)
