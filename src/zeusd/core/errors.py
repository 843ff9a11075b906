"""Every error a method can end in, with no protocol attached; the front ends render them.

An error has a numeric code, a fixed message and structured ``data``. The codes are the
JSON-RPC ones, because that is how the line protocol spells them; the HTTP front end maps
each code to a status (see ``zeusd.http.status``). Device failures of every kind (NVML,
RAPL, a lane closed by shutdown) become one :class:`DeviceError` here, in
:func:`failure_detail`, and nowhere else.
"""

from __future__ import annotations

from typing import Any, ClassVar

from zeusd.cpu.rapl import RaplError
from zeusd.gpu.backend import NvmlCallError
from zeusd.gpu.lanes import LaneClosedError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
DEVICE_ERROR = -32001
PERMISSION_DENIED = -32002
GROUP_DISABLED = -32004
AUTH_REQUIRED = -32005

#: What a device failure of these kinds is reported as.
DEVICE_FAILURES = (NvmlCallError, RaplError, LaneClosedError)
#: The NVML name a lane closed by shutdown reports (NVML says this after nvmlShutdown).
SHUT_DOWN = "NVML_ERROR_UNINITIALIZED"


class ZeusdError(Exception):
    """Base class: an error with a fixed code and message, and structured ``data``."""

    code: ClassVar[int]
    message: ClassVar[str]
    #: Names the error in the OpenRPC document, with an example of its ``data``.
    doc_name: ClassVar[str]
    doc_data: ClassVar[Any]

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} ({self.code}): {self.data}"

    def to_dict(self) -> dict[str, Any]:
        """The error object: ``{"code", "message", "data"}``."""
        return {"code": self.code, "message": self.message, "data": self.data}


class InvalidParamsError(ZeusdError):
    """A parameter is missing, unknown, mistyped or out of range (-32602)."""

    code = INVALID_PARAMS
    message = "Invalid params"
    doc_name = "InvalidParams"
    doc_data: ClassVar[dict[str, Any]] = {
        "param": "name of the offending param",
        "reason": "why it was refused",
    }

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


class DeviceError(ZeusdError):
    """A device failed on one or more targets (-32001); ``data`` says which succeeded, why
    the others did not."""

    code = DEVICE_ERROR
    message = "Device error"
    doc_name = "DeviceError"
    doc_data: ClassVar[dict[str, Any]] = {
        "succeeded": [],
        "errors": {"<id>": {"nvml_error": "", "message": ""}},
    }

    def __init__(self, succeeded: list[int], errors: dict[int, dict[str, str]]) -> None:
        super().__init__(
            {
                "succeeded": succeeded,
                "errors": {str(target): detail for target, detail in errors.items()},
            }
        )

    @property
    def nvml_errors(self) -> set[str]:
        """The ``NVML_ERROR_*`` names of the failed targets."""
        return {detail["nvml_error"] for detail in self.data["errors"].values()}


class PermissionDeniedError(ZeusdError):
    """The daemon's own policy refuses this caller this method (-32002)."""

    code = PERMISSION_DENIED
    message = "Permission denied"
    doc_name = "PermissionDenied"
    doc_data: ClassVar[dict[str, Any]] = {
        "method": "the method refused",
        "reason": "who is allowed",
    }

    def __init__(self, method: str, reason: str) -> None:
        super().__init__({"method": method, "reason": reason})


class GroupDisabledError(ZeusdError):
    """The method's API group is not enabled on this daemon (-32004)."""

    code = GROUP_DISABLED
    message = "Method group disabled"
    doc_name = "MethodGroupDisabled"
    doc_data: ClassVar[dict[str, Any]] = {
        "method": "the method",
        "group": "its API group",
        "reason": "not enabled",
    }

    def __init__(self, method: str, group: str) -> None:
        super().__init__(
            {"method": method, "group": group, "reason": f"the '{group}' group is not enabled"}
        )


class AuthRequiredError(ZeusdError):
    """This caller must authenticate first, or its token was refused (-32005)."""

    code = AUTH_REQUIRED
    message = "Authentication required"
    doc_name = "AuthenticationRequired"
    doc_data: ClassVar[dict[str, Any]] = {
        "reason": "why: not authenticated, token refused or expired"
    }

    def __init__(self, reason: str) -> None:
        super().__init__({"reason": reason})


class MethodNotFoundError(ZeusdError):
    """No such method (-32601); ``data`` is the name asked for."""

    code = METHOD_NOT_FOUND
    message = "Method not found"
    doc_name = "MethodNotFound"
    doc_data = "the method name"

    def __init__(self, method: str) -> None:
        super().__init__(method)


class InternalError(ZeusdError):
    """A bug (-32603); the traceback is in the daemon log, never sent to the client."""

    code = INTERNAL_ERROR
    message = "Internal error"
    doc_name = "InternalError"
    doc_data = "the exception type; see the daemon log"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}; see the daemon log")


def failure_detail(exc: BaseException) -> dict[str, str] | None:
    """``{"nvml_error", "message"}`` for a device failure; None for anything else (a bug)."""
    if isinstance(exc, NvmlCallError | RaplError):
        return exc.detail()
    if isinstance(exc, LaneClosedError):
        return {"nvml_error": SHUT_DOWN, "message": f"not run: {exc}"}
    return None
