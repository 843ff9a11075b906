"""What the client raises: one class per JSON-RPC error code, plus connection trouble.

Standard library only, so the client can be used (or copied) without the daemon's deps.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ZeusdError(Exception):
    """Base class of everything the client raises."""


class ZeusdConnectionError(ZeusdError, ConnectionError):
    """The daemon could not be reached, or the connection broke mid-call."""


class ZeusdTimeoutError(ZeusdConnectionError, TimeoutError):
    """No reply within the client's timeout; the connection is dropped (a late reply is lost)."""


class ZeusdProtocolError(ZeusdConnectionError):
    """A reply that breaks the wire contract (not JSON, wrong shape); the connection is dropped."""


class ZeusdRpcError(ZeusdError):
    """The daemon answered with a JSON-RPC error object."""

    code_for_class: ClassVar[int | None] = None

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(method, code, message, data)
        self.method = method
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        text = f"{self.method}: {self.message} ({self.code})"
        return text if self.data is None else f"{text}: {self.data}"


class ParseError(ZeusdRpcError):
    code_for_class = -32700


class InvalidRequestError(ZeusdRpcError):
    code_for_class = -32600


class MethodNotFoundError(ZeusdRpcError):
    code_for_class = -32601


class InvalidParamsError(ZeusdRpcError):
    code_for_class = -32602


class InternalError(ZeusdRpcError):
    code_for_class = -32603


class DeviceError(ZeusdRpcError):
    """NVML/RAPL failed; ``data["errors"]`` maps each failed id to its NVML error name."""

    code_for_class = -32001

    def nvml_errors(self) -> dict[int, str]:
        """``{gpu_id: "NVML_ERROR_…"}`` for every device that failed."""
        errors = self.data.get("errors", {}) if isinstance(self.data, dict) else {}
        return {int(k): str(v.get("nvml_error", "")) for k, v in errors.items()}


class PermissionDeniedError(ZeusdRpcError):
    code_for_class = -32002


class GroupDisabledError(ZeusdRpcError):
    code_for_class = -32004


class AuthenticationRequiredError(ZeusdRpcError):
    code_for_class = -32005


_BY_CODE: dict[int, type[ZeusdRpcError]] = {
    cls.code_for_class: cls
    for cls in (
        ParseError,
        InvalidRequestError,
        MethodNotFoundError,
        InvalidParamsError,
        InternalError,
        DeviceError,
        PermissionDeniedError,
        GroupDisabledError,
        AuthenticationRequiredError,
    )
    if cls.code_for_class is not None
}


def rpc_error(method: str, error: Any) -> ZeusdError:
    """The exception for a response's ``error`` member (the base class for unknown codes)."""
    if not isinstance(error, dict) or type(error.get("code")) is not int:
        return ZeusdProtocolError(f"{method}: malformed error object: {error!r}")
    code: int = error["code"]
    cls = _BY_CODE.get(code, ZeusdRpcError)
    return cls(method, code, str(error.get("message", "")), error.get("data"))
