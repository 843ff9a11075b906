"""A synchronous Python client for zeusd, standard library only (no trio in the caller).

from zeusd.client import ZeusdClient
with ZeusdClient.from_env() as zeusd:
    zeusd.set_power_limit([0], 250_000)
    print(zeusd.get_power_limit())
"""

from zeusd.client.client import (
    Discovery,
    GpuInfo,
    PowerLimitConstraints,
    PowerReading,
    ZeusdClient,
)
from zeusd.client.errors import (
    AuthenticationRequiredError,
    DeviceError,
    GroupDisabledError,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    MethodNotFoundError,
    ParseError,
    PermissionDeniedError,
    ZeusdConnectionError,
    ZeusdError,
    ZeusdProtocolError,
    ZeusdRpcError,
    ZeusdTimeoutError,
)
from zeusd.client.transport import Address

__all__ = [
    "Address",
    "AuthenticationRequiredError",
    "DeviceError",
    "Discovery",
    "GpuInfo",
    "GroupDisabledError",
    "InternalError",
    "InvalidParamsError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "ParseError",
    "PermissionDeniedError",
    "PowerLimitConstraints",
    "PowerReading",
    "ZeusdClient",
    "ZeusdConnectionError",
    "ZeusdError",
    "ZeusdProtocolError",
    "ZeusdRpcError",
    "ZeusdTimeoutError",
]
