"""Names for NVML error codes, taken from pynvml itself so they always match the driver's."""

from __future__ import annotations

import pynvml

#: ``NVML_ERROR_NO_PERMISSION`` -> 4, for every error constant pynvml knows.
ERROR_CODES: dict[str, int] = {
    name: value
    for name, value in vars(pynvml).items()
    if name.startswith("NVML_ERROR_") and isinstance(value, int)
}

_NAMES: dict[int, str] = {}
for _name, _value in sorted(ERROR_CODES.items()):
    # A few codes have aliases; keep the first name in sorted order so the choice is stable.
    _NAMES.setdefault(_value, _name)


def error_name(code: int) -> str:
    """Return the ``NVML_ERROR_*`` name of *code* (``NVML_ERROR_<code>`` if pynvml has none)."""
    return _NAMES.get(code, f"NVML_ERROR_{code}")
