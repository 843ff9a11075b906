"""What the daemon tells whoever counts its work (the metrics): calls, writes, connections.

The core and the server call an :class:`Observer`; they never know who implements it, so
counting needs no monitoring library down here and no front end. Every method is called on
the trio thread and must return at once (no I/O, no locks held for long): it runs on the
path of every request.
"""

from __future__ import annotations

from typing import Protocol

#: The ``code`` of a call that succeeded (errors carry their JSON-RPC code).
OK = 0
#: ``dialect`` of a connection, by the protocol its first bytes chose.
JSONRPC = "jsonrpc"
HTTP = "http"


class Observer(Protocol):
    """Told of each call, each GPU written and each connection, as they happen."""

    def call_finished(self, method: str, code: int, seconds: float) -> None:
        """A call of *method* ended with *code* (:data:`OK` or an error code) after
        *seconds*, from the access check to its result."""

    def gpu_written(self, gpu: int, method: str) -> None:
        """A gpu-control *method* was applied to GPU *gpu*."""

    def connection_opened(self, dialect: str) -> None:
        """A connection began to speak *dialect* (:data:`JSONRPC` or :data:`HTTP`)."""

    def connection_closed(self, dialect: str) -> None:
        """A connection that spoke *dialect* ended."""


class NoObserver:
    """Counts nothing (unit tests, and daemons built without metrics)."""

    def call_finished(self, method: str, code: int, seconds: float) -> None:
        pass

    def gpu_written(self, gpu: int, method: str) -> None:
        pass

    def connection_opened(self, dialect: str) -> None:
        pass

    def connection_closed(self, dialect: str) -> None:
        pass
