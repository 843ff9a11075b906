"""amdsmi status codes, and the NVML error name each one is reported under.

The wire speaks NVML error names (``data.errors.<id>.nvml_error``), so an AMD failure is
given the NVML name that means the same thing; the amdsmi status name stays in the message.
The codes are those of ``amdsmi_wrapper.AMDSMI_STATUS_*`` (amdsmi 6.x and 7.x); they are
written down here because the real module cannot be imported without ``libamd_smi.so``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

#: ``AMDSMI_STATUS_*`` name -> code, with a short description (ours) for messages.
STATUS: Mapping[str, tuple[int, str]] = types.MappingProxyType(
    {
        "AMDSMI_STATUS_SUCCESS": (0, "Success"),
        "AMDSMI_STATUS_INVAL": (1, "Invalid parameters"),
        "AMDSMI_STATUS_NOT_SUPPORTED": (2, "Feature not supported"),
        "AMDSMI_STATUS_NOT_YET_IMPLEMENTED": (3, "Feature not yet implemented"),
        "AMDSMI_STATUS_FAIL_LOAD_MODULE": (4, "Failed to load the library"),
        "AMDSMI_STATUS_FAIL_LOAD_SYMBOL": (5, "Failed to load a symbol"),
        "AMDSMI_STATUS_DRM_ERROR": (6, "libdrm call failed"),
        "AMDSMI_STATUS_API_FAILED": (7, "API call failed"),
        "AMDSMI_STATUS_TIMEOUT": (8, "Timeout in API call"),
        "AMDSMI_STATUS_RETRY": (9, "Retry operation"),
        "AMDSMI_STATUS_NO_PERM": (10, "Permission denied"),
        "AMDSMI_STATUS_INTERRUPT": (11, "Interrupted"),
        "AMDSMI_STATUS_IO": (12, "I/O error"),
        "AMDSMI_STATUS_ADDRESS_FAULT": (13, "Bad address"),
        "AMDSMI_STATUS_FILE_ERROR": (14, "Error opening a file"),
        "AMDSMI_STATUS_OUT_OF_RESOURCES": (15, "Not enough memory"),
        "AMDSMI_STATUS_INTERNAL_EXCEPTION": (16, "Internal error"),
        "AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS": (17, "Input out of bounds"),
        "AMDSMI_STATUS_INIT_ERROR": (18, "Initialization error"),
        "AMDSMI_STATUS_REFCOUNT_OVERFLOW": (19, "Reference counter overflow"),
        "AMDSMI_STATUS_DIRECTORY_NOT_FOUND": (20, "Directory not found"),
        "AMDSMI_STATUS_BUSY": (30, "Device busy"),
        "AMDSMI_STATUS_NOT_FOUND": (31, "Device not found"),
        "AMDSMI_STATUS_NOT_INIT": (32, "Not initialized"),
        "AMDSMI_STATUS_NO_SLOT": (33, "No free slot"),
        "AMDSMI_STATUS_DRIVER_NOT_LOADED": (34, "Driver not loaded"),
        "AMDSMI_STATUS_MORE_DATA": (39, "More data than the buffer holds"),
        "AMDSMI_STATUS_NO_DATA": (40, "No data for the given input"),
        "AMDSMI_STATUS_INSUFFICIENT_SIZE": (41, "Insufficient size"),
        "AMDSMI_STATUS_UNEXPECTED_SIZE": (42, "Unexpected size of data"),
        "AMDSMI_STATUS_UNEXPECTED_DATA": (43, "Unexpected data"),
        "AMDSMI_STATUS_NON_AMD_CPU": (44, "Non-AMD CPU"),
        "AMDSMI_STATUS_NO_ENERGY_DRV": (45, "Energy driver not found"),
        "AMDSMI_STATUS_NO_MSR_DRV": (46, "MSR driver not found"),
        "AMDSMI_STATUS_NO_HSMP_DRV": (47, "HSMP driver not found"),
        "AMDSMI_STATUS_NO_HSMP_SUP": (48, "HSMP not supported"),
        "AMDSMI_STATUS_NO_HSMP_MSG_SUP": (49, "HSMP message not supported"),
        "AMDSMI_STATUS_HSMP_TIMEOUT": (50, "HSMP message timeout"),
        "AMDSMI_STATUS_NO_DRV": (51, "No energy or HSMP driver"),
        "AMDSMI_STATUS_FILE_NOT_FOUND": (52, "File or directory not found"),
        "AMDSMI_STATUS_ARG_PTR_NULL": (53, "Argument is invalid"),
        "AMDSMI_STATUS_AMDGPU_RESTART_ERR": (54, "AMDGPU restart failed"),
        "AMDSMI_STATUS_SETTING_UNAVAILABLE": (55, "Setting is not available"),
        "AMDSMI_STATUS_CORRUPTED_EEPROM": (56, "EEPROM is corrupted"),
        "AMDSMI_STATUS_MAP_ERROR": (0xFFFFFFFE, "Library error without a status code"),
        "AMDSMI_STATUS_UNKNOWN_ERROR": (0xFFFFFFFF, "An unknown error occurred"),
    }
)

#: code -> ``AMDSMI_STATUS_*`` name.
STATUS_NAMES: Mapping[int, str] = types.MappingProxyType(
    {code: name for name, (code, _) in STATUS.items()}
)

_AS_NVML = {
    "AMDSMI_STATUS_INVAL": "NVML_ERROR_INVALID_ARGUMENT",
    "AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS": "NVML_ERROR_INVALID_ARGUMENT",
    "AMDSMI_STATUS_ARG_PTR_NULL": "NVML_ERROR_INVALID_ARGUMENT",
    "AMDSMI_STATUS_NOT_SUPPORTED": "NVML_ERROR_NOT_SUPPORTED",
    "AMDSMI_STATUS_NOT_YET_IMPLEMENTED": "NVML_ERROR_NOT_SUPPORTED",
    "AMDSMI_STATUS_SETTING_UNAVAILABLE": "NVML_ERROR_NOT_SUPPORTED",
    "AMDSMI_STATUS_NO_HSMP_SUP": "NVML_ERROR_NOT_SUPPORTED",
    "AMDSMI_STATUS_NO_HSMP_MSG_SUP": "NVML_ERROR_NOT_SUPPORTED",
    "AMDSMI_STATUS_NO_PERM": "NVML_ERROR_NO_PERMISSION",
    "AMDSMI_STATUS_TIMEOUT": "NVML_ERROR_TIMEOUT",
    "AMDSMI_STATUS_HSMP_TIMEOUT": "NVML_ERROR_TIMEOUT",
    "AMDSMI_STATUS_BUSY": "NVML_ERROR_IN_USE",
    "AMDSMI_STATUS_NOT_FOUND": "NVML_ERROR_NOT_FOUND",
    "AMDSMI_STATUS_NO_DATA": "NVML_ERROR_NOT_FOUND",
    "AMDSMI_STATUS_NOT_INIT": "NVML_ERROR_UNINITIALIZED",
    "AMDSMI_STATUS_INIT_ERROR": "NVML_ERROR_UNINITIALIZED",
    "AMDSMI_STATUS_DRIVER_NOT_LOADED": "NVML_ERROR_DRIVER_NOT_LOADED",
    "AMDSMI_STATUS_NO_ENERGY_DRV": "NVML_ERROR_DRIVER_NOT_LOADED",
    "AMDSMI_STATUS_NO_DRV": "NVML_ERROR_DRIVER_NOT_LOADED",
    "AMDSMI_STATUS_FAIL_LOAD_MODULE": "NVML_ERROR_LIBRARY_NOT_FOUND",
    "AMDSMI_STATUS_FAIL_LOAD_SYMBOL": "NVML_ERROR_FUNCTION_NOT_FOUND",
    "AMDSMI_STATUS_OUT_OF_RESOURCES": "NVML_ERROR_MEMORY",
    "AMDSMI_STATUS_INSUFFICIENT_SIZE": "NVML_ERROR_INSUFFICIENT_SIZE",
    "AMDSMI_STATUS_MORE_DATA": "NVML_ERROR_INSUFFICIENT_SIZE",
    "AMDSMI_STATUS_CORRUPTED_EEPROM": "NVML_ERROR_CORRUPTED_INFOROM",
}


def status_name(code: int) -> str:
    """The ``AMDSMI_STATUS_*`` name of *code* (``AMDSMI_STATUS_<code>`` if unknown)."""
    return STATUS_NAMES.get(code, f"AMDSMI_STATUS_{code}")


def nvml_name(code: int) -> str:
    """The NVML error name an amdsmi status is reported under; ``NVML_ERROR_UNKNOWN`` if
    no NVML error means the same."""
    return _AS_NVML.get(status_name(code), "NVML_ERROR_UNKNOWN")
