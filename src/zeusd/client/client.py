"""ZeusdClient: a synchronous, thread-safe Python client with a typed method per RPC.

Adding a method is one small wrapper around ``call`` (reads) or ``_write`` (writes).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zeusd.client.errors import MethodNotFoundError, ZeusdConnectionError, rpc_error
from zeusd.client.transport import (
    DEFAULT_SOCKET_PATH,
    Address,
    ConnectionClosed,
    LineConnection,
    env_address,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0

#: Methods that change nothing, so re-sending one after a broken connection is harmless.
_READ_PREFIXES = ("gpu.get_", "cpu.get_")
_READ_METHODS = frozenset({"discover", "time", "rpc.discover", "session.whoami"})


def is_read(method: str) -> bool:
    return method in _READ_METHODS or method.startswith(_READ_PREFIXES)


@dataclass(frozen=True)
class GpuInfo:
    id: int
    name: str
    uuid: str
    pci_address: str
    cumulative_energy_available: bool


@dataclass(frozen=True)
class Discovery:
    version: str
    backend: str
    gpus: list[GpuInfo]
    cpus: list[dict[str, Any]]
    enabled_api_groups: list[str]
    auth_required: bool


@dataclass(frozen=True)
class PowerLimitConstraints:
    min_power_limit_mw: int
    max_power_limit_mw: int
    default_power_limit_mw: int


@dataclass(frozen=True)
class PowerReading:
    timestamp_ms: int
    power_mw: dict[int, int]


def _ids(gpu_ids: Iterable[int] | None) -> list[int] | None:
    return None if gpu_ids is None else list(gpu_ids)


def _drop_none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def _by_id(result: Mapping[str, Any], key: str) -> dict[int, Any]:
    return {int(gpu): value[key] for gpu, value in result.items()}


class ZeusdClient:
    """One connection to zeusd, opened on first use and shared by every thread.

    *address* is an ``Address`` or a Unix socket path (default ``/var/run/zeusd.sock``);
    ``from_env()`` reads the address and token from the environment instead.

    Calls are serialized on the connection (one request in flight at a time). A read that
    finds the connection broken reconnects and is sent once more; a write is never re-sent,
    because the daemon may have applied it before the connection broke.
    """

    def __init__(
        self,
        address: Address | str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> None:
        if address is None:
            address = Address.unix(DEFAULT_SOCKET_PATH)
        elif isinstance(address, str):
            address = Address.unix(address)
        self.address = address
        self.token = token
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: LineConnection | None = None
        self._ids = itertools.count(1)

    @classmethod
    def from_env(
        cls, *, timeout: float | None = DEFAULT_TIMEOUT_S, environ: dict[str, str] | None = None
    ) -> ZeusdClient:
        """Configured by ``ZEUSD_SOCK_PATH`` or ``ZEUSD_HOST_PORT``, and ``ZEUSD_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(env_address(dict(env)), token=env.get("ZEUSD_TOKEN") or None, timeout=timeout)

    # --- connection ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> ZeusdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> LineConnection:
        if self._conn is not None and self._conn.peer_has_closed():
            log.info("zeusd closed the connection while it was idle; reconnecting")
            self._drop()
        if self._conn is None:
            conn = LineConnection(self.address, self.timeout)
            try:
                if self.token is not None:
                    self._authenticate(conn, self.token)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _authenticate(self, conn: LineConnection, token: str) -> None:
        try:
            self._request(conn, "session.authenticate", {"token": token})
        except MethodNotFoundError:
            # A daemon without sessions has no tokens to check: carry on unauthenticated.
            log.debug("zeusd at %s has no session.authenticate; token not sent", self.address)

    def _request(self, conn: LineConnection, method: str, params: Mapping[str, Any]) -> Any:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params:
            message["params"] = dict(params)
        conn.send(message)
        reply = conn.receive_reply(request_id)
        if "error" in reply:
            raise rpc_error(method, reply["error"])
        return reply.get("result")

    # --- generic calls ---------------------------------------------------------------------

    def call(self, method: str, /, **params: Any) -> Any:
        """Send a request and return its result; raises a ZeusdRpcError subclass on error.

        Params whose value is None are left out (the daemon then uses its default).
        """
        return self.request(method, _drop_none(params))

    def notify(self, method: str, /, **params: Any) -> None:
        """Send a notification: the daemon runs it and never answers, not even on failure."""
        self.send_notification(method, _drop_none(params))

    def request(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Like ``call``, with *params* sent exactly as given (None becomes JSON null)."""
        attempts = 2 if is_read(method) else 1
        with self._lock:
            for attempt in range(attempts):
                conn = self._connection()
                try:
                    return self._request(conn, method, params or {})
                except ConnectionClosed as exc:
                    self._drop()
                    if attempt + 1 == attempts:
                        raise ZeusdConnectionError(
                            f"{method}: connection to zeusd at {self.address} broke: {exc}"
                        ) from exc
                    log.info("connection to zeusd broke; reconnecting once for %s", method)
                except ZeusdConnectionError:
                    # A timeout or garbled reply leaves the stream position unknown.
                    self._drop()
                    raise
        raise AssertionError("unreachable")

    def send_notification(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Like ``notify``, with *params* sent exactly as given."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = dict(params)
        with self._lock:
            conn = self._connection()
            try:
                conn.send(message)
            except ConnectionClosed as exc:
                self._drop()
                raise ZeusdConnectionError(
                    f"{method}: connection to zeusd at {self.address} broke: {exc}"
                ) from exc
            except ZeusdConnectionError:
                self._drop()
                raise

    def _write(self, method: str, block: bool, **params: Any) -> list[int] | None:
        if not block:
            self.notify(method, **params)
            return None
        result = self.call(method, **params)
        return [int(gpu) for gpu in result["applied"]]

    # --- always available -------------------------------------------------------------------

    def discover(self) -> Discovery:
        r = self.call("discover")
        return Discovery(
            version=r["version"],
            backend=r["backend"],
            gpus=[
                GpuInfo(
                    id=int(g["id"]),
                    name=g["name"],
                    uuid=g["uuid"],
                    pci_address=g["pci_address"],
                    cumulative_energy_available=bool(g["cumulative_energy_available"]),
                )
                for g in r["gpus"]
            ],
            cpus=list(r["cpus"]),
            enabled_api_groups=list(r["enabled_api_groups"]),
            auth_required=bool(r["auth_required"]),
        )

    def time_ms(self) -> int:
        """The daemon's wall clock, Unix milliseconds."""
        return int(self.call("time")["timestamp_ms"])

    def rpc_discover(self) -> dict[str, Any]:
        """The daemon's OpenRPC document."""
        result: dict[str, Any] = self.call("rpc.discover")
        return result

    # --- gpu-control (block=False sends a notification and returns None) --------------------

    def set_power_limit(
        self, gpu_ids: Iterable[int], power_limit_mw: int, *, block: bool = True
    ) -> list[int] | None:
        return self._write(
            "gpu.set_power_limit", block, gpu_ids=list(gpu_ids), power_limit_mw=power_limit_mw
        )

    def reset_power_limit(self, gpu_ids: Iterable[int], *, block: bool = True) -> list[int] | None:
        return self._write("gpu.reset_power_limit", block, gpu_ids=list(gpu_ids))

    def set_persistence_mode(
        self, gpu_ids: Iterable[int], enabled: bool, *, block: bool = True
    ) -> list[int] | None:
        return self._write(
            "gpu.set_persistence_mode", block, gpu_ids=list(gpu_ids), enabled=enabled
        )

    def set_gpu_locked_clocks(
        self, gpu_ids: Iterable[int], min_clock_mhz: int, max_clock_mhz: int, *, block: bool = True
    ) -> list[int] | None:
        return self._write(
            "gpu.set_gpu_locked_clocks",
            block,
            gpu_ids=list(gpu_ids),
            min_clock_mhz=min_clock_mhz,
            max_clock_mhz=max_clock_mhz,
        )

    def reset_gpu_locked_clocks(
        self, gpu_ids: Iterable[int], *, block: bool = True
    ) -> list[int] | None:
        return self._write("gpu.reset_gpu_locked_clocks", block, gpu_ids=list(gpu_ids))

    def set_mem_locked_clocks(
        self, gpu_ids: Iterable[int], min_clock_mhz: int, max_clock_mhz: int, *, block: bool = True
    ) -> list[int] | None:
        return self._write(
            "gpu.set_mem_locked_clocks",
            block,
            gpu_ids=list(gpu_ids),
            min_clock_mhz=min_clock_mhz,
            max_clock_mhz=max_clock_mhz,
        )

    def reset_mem_locked_clocks(
        self, gpu_ids: Iterable[int], *, block: bool = True
    ) -> list[int] | None:
        return self._write("gpu.reset_mem_locked_clocks", block, gpu_ids=list(gpu_ids))

    def reset_locked_clocks(
        self, gpu_ids: Iterable[int], *, block: bool = True
    ) -> list[int] | None:
        return self._write("gpu.reset_locked_clocks", block, gpu_ids=list(gpu_ids))

    # --- gpu-read (gpu_ids None: every GPU) --------------------------------------------------

    def get_power_limit(self, gpu_ids: Iterable[int] | None = None) -> dict[int, int]:
        """``{gpu: power_limit_mw}``."""
        return _by_id(self.call("gpu.get_power_limit", gpu_ids=_ids(gpu_ids)), "power_limit_mw")

    def get_power_limit_constraints(
        self, gpu_ids: Iterable[int] | None = None
    ) -> dict[int, PowerLimitConstraints]:
        result = self.call("gpu.get_power_limit_constraints", gpu_ids=_ids(gpu_ids))
        return {
            int(gpu): PowerLimitConstraints(
                int(v["min_power_limit_mw"]),
                int(v["max_power_limit_mw"]),
                int(v["default_power_limit_mw"]),
            )
            for gpu, v in result.items()
        }

    def get_persistence_mode(self, gpu_ids: Iterable[int] | None = None) -> dict[int, bool]:
        return _by_id(self.call("gpu.get_persistence_mode", gpu_ids=_ids(gpu_ids)), "enabled")

    def get_power(self, gpu_ids: Iterable[int] | None = None) -> PowerReading:
        r = self.call("gpu.get_power", gpu_ids=_ids(gpu_ids))
        return PowerReading(
            int(r["timestamp_ms"]), {int(gpu): int(mw) for gpu, mw in r["power_mw"].items()}
        )

    def get_cumulative_energy(self, gpu_ids: Iterable[int] | None = None) -> dict[int, int]:
        """``{gpu: energy_mj}`` since the driver loaded."""
        return _by_id(self.call("gpu.get_cumulative_energy", gpu_ids=_ids(gpu_ids)), "energy_mj")

    def get_supported_memory_clocks(
        self, gpu_ids: Iterable[int] | None = None
    ) -> dict[int, list[int]]:
        return _by_id(
            self.call("gpu.get_supported_memory_clocks", gpu_ids=_ids(gpu_ids)),
            "memory_clocks_mhz",
        )

    def get_supported_graphics_clocks(
        self, gpu_ids: Iterable[int] | None = None, memory_clock_mhz: int | None = None
    ) -> dict[int, list[int]]:
        return _by_id(
            self.call(
                "gpu.get_supported_graphics_clocks",
                gpu_ids=_ids(gpu_ids),
                memory_clock_mhz=memory_clock_mhz,
            ),
            "graphics_clocks_mhz",
        )
