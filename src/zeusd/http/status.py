"""Which HTTP status each core error is answered with (PROTOCOL.md section 7)."""

from __future__ import annotations

from zeusd.core import errors

_BY_CODE = {
    errors.PARSE_ERROR: 400,
    errors.INVALID_REQUEST: 400,
    errors.INVALID_PARAMS: 400,
    errors.METHOD_NOT_FOUND: 404,
    errors.GROUP_DISABLED: 404,
    errors.AUTH_REQUIRED: 401,
    errors.PERMISSION_DENIED: 403,
    errors.INTERNAL_ERROR: 500,
}


def status_of(error: errors.ZeusdError) -> int:
    """The status for *error*; a device error by what the devices said."""
    if isinstance(error, errors.DeviceError):
        names = error.nvml_errors
        if "NVML_ERROR_NO_PERMISSION" in names:
            return 403
        if names & {"NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_NOT_SUPPORTED"}:
            return 400
        return 500
    return _BY_CODE.get(error.code, 500)
