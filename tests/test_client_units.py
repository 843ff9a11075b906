"""Pure units of the client: addresses, the environment, and error classes by code."""

from __future__ import annotations

import pytest

from zeusd.client import (
    Address,
    DeviceError,
    GroupDisabledError,
    InvalidParamsError,
    ZeusdProtocolError,
    ZeusdRpcError,
)
from zeusd.client.client import is_read
from zeusd.client.errors import rpc_error
from zeusd.client.transport import env_address


def test_tcp_addresses_parse() -> None:
    """HOST:PORT and [V6]:PORT parse; anything else is a ValueError."""
    assert Address.tcp("127.0.0.1:4938") == Address(host="127.0.0.1", port=4938)
    assert Address.tcp("[::1]:4938") == Address(host="::1", port=4938)
    assert str(Address.tcp("[::1]:4938")) == "tcp:[::1]:4938"
    for bad in ("4938", ":4938", "host:", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            Address.tcp(bad)


def test_environment_precedence() -> None:
    """ZEUSD_SOCK_PATH beats ZEUSD_HOST_PORT; empty values count as unset."""
    assert env_address({"ZEUSD_SOCK_PATH": "", "ZEUSD_HOST_PORT": "h:1"}) == Address.tcp("h:1")
    assert env_address({"ZEUSD_SOCK_PATH": "/s", "ZEUSD_HOST_PORT": "h:1"}) == Address.unix("/s")
    assert env_address({}) == Address.unix("/var/run/zeusd.sock")


def test_error_class_follows_code() -> None:
    """Each known code has its class; unknown codes use the base class; data is kept."""
    error = rpc_error("m", {"code": -32602, "message": "Invalid params", "data": {"param": "x"}})
    assert isinstance(error, InvalidParamsError)
    assert (error.code, error.message, error.data) == (-32602, "Invalid params", {"param": "x"})
    assert isinstance(rpc_error("m", {"code": -32004, "message": ""}), GroupDisabledError)
    unknown = rpc_error("m", {"code": -1, "message": "odd"})
    assert type(unknown) is ZeusdRpcError
    assert str(unknown) == "m: odd (-1)"
    assert isinstance(rpc_error("m", "not an object"), ZeusdProtocolError)


def test_device_error_lists_nvml_errors_by_gpu() -> None:
    """nvml_errors() maps each failed GPU to its NVML error name."""
    data = {"succeeded": [0], "errors": {"2": {"nvml_error": "NVML_ERROR_TIMEOUT", "message": ""}}}
    error = rpc_error("m", {"code": -32001, "message": "Device error", "data": data})
    assert isinstance(error, DeviceError)
    assert error.nvml_errors() == {2: "NVML_ERROR_TIMEOUT"}


def test_reads_are_told_from_writes() -> None:
    """Only side-effect-free methods are eligible for a resend."""
    assert is_read("gpu.get_power")
    assert is_read("cpu.get_cumulative_energy")
    assert is_read("discover")
    assert not is_read("gpu.set_power_limit")
    assert not is_read("gpu.subscribe_power")
    assert not is_read("session.authenticate")
