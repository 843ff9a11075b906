"""The marker for an optional param the client left out (``null`` is a value, and refused)."""

from __future__ import annotations

import enum


class Omitted(enum.Enum):
    OMITTED = "omitted"

    def __repr__(self) -> str:
        return "<omitted>"


OMITTED = Omitted.OMITTED
