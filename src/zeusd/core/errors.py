"""Error classes the methods raise, each carrying its JSON-RPC code.

They subclass jsonrpcserver's ``JsonRpcError`` so that the library's own result types can
carry them; the dispatcher turns any of them into an error response.
"""

from __future__ import annotations

from typing import Any, ClassVar

from jsonrpcserver.exceptions import JsonRpcError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
DEVICE_ERROR = -32001
PERMISSION_DENIED = -32002
GROUP_DISABLED = -32004
AUTH_REQUIRED = -32005


class RpcError(JsonRpcError):
    """Base class: a JSON-RPC error with a fixed code and message."""

    rpc_code: ClassVar[int]
    rpc_message: ClassVar[str]

    def __init__(self, data: Any) -> None:
        super().__init__(self.rpc_code, self.rpc_message, data)

    def __str__(self) -> str:
        return f"{self.message} ({self.code}): {self.data}"


class InvalidParamsError(RpcError):
    """A parameter is missing, unknown, mistyped or out of range (-32602)."""

    rpc_code = INVALID_PARAMS
    rpc_message = "Invalid params"

    def __init__(
        self, param: str, reason: str, *, min: int | None = None, max: int | None = None
    ) -> None:
        data: dict[str, Any] = {"param": param, "reason": reason}
        if min is not None:
            data["min"] = min
        if max is not None:
            data["max"] = max
        super().__init__(data)
        self.param = param
        self.reason = reason


class DeviceError(RpcError):
    """NVML failed on one or more GPUs (-32001); ``data`` says which succeeded, why others not."""

    rpc_code = DEVICE_ERROR
    rpc_message = "Device error"

    def __init__(self, succeeded: list[int], errors: dict[int, dict[str, str]]) -> None:
        super().__init__(
            {
                "succeeded": succeeded,
                "errors": {str(gpu): detail for gpu, detail in errors.items()},
            }
        )


class GroupDisabledError(RpcError):
    """The method's API group is not enabled on this daemon (-32004)."""

    rpc_code = GROUP_DISABLED
    rpc_message = "Method group disabled"

    def __init__(self, method: str, group: str) -> None:
        super().__init__(
            {"method": method, "group": group, "reason": f"the '{group}' group is not enabled"}
        )


class PermissionDeniedError(RpcError):
    """The daemon's own policy refuses this caller this method (-32002)."""

    rpc_code = PERMISSION_DENIED
    rpc_message = "Permission denied"

    def __init__(self, method: str, reason: str) -> None:
        super().__init__({"method": method, "reason": reason})


class AuthRequiredError(RpcError):
    """This connection must authenticate first, or its token was refused (-32005)."""

    rpc_code = AUTH_REQUIRED
    rpc_message = "Authentication required"

    def __init__(self, reason: str) -> None:
        super().__init__({"reason": reason})
