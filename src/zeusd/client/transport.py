"""Where the daemon is, and one blocking line-delimited JSON-RPC connection to it."""

from __future__ import annotations

import json
import os
import select
import socket
from dataclasses import dataclass
from typing import Any

from zeusd.client.errors import ZeusdConnectionError, ZeusdProtocolError, ZeusdTimeoutError

DEFAULT_SOCKET_PATH = "/var/run/zeusd.sock"


@dataclass(frozen=True)
class Address:
    """A Unix socket path, or a TCP host and port (exactly one of the two)."""

    socket_path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def unix(cls, path: str) -> Address:
        return cls(socket_path=path)

    @classmethod
    def tcp(cls, host_port: str) -> Address:
        """From ``HOST:PORT`` or ``[V6]:PORT``. Raises ValueError."""
        host, sep, port_text = host_port.rpartition(":")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"expected HOST:PORT (got {host_port!r})")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"tcp:{host}:{self.port}"


class ConnectionClosed(Exception):
    """The peer closed or reset the connection; the request may or may not have been run."""


class LineConnection:
    """One socket to the daemon: JSON lines out, JSON lines in. Not thread-safe by itself."""

    def __init__(self, address: Address, timeout: float | None) -> None:
        self.address = address
        self.timeout = timeout
        try:
            if address.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(address.socket_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(
                    (str(address.host), int(address.port or 0)), timeout=timeout
                )
        except TimeoutError as exc:
            raise ZeusdTimeoutError(f"connecting to {address} timed out") from exc
        except OSError as exc:
            raise ZeusdConnectionError(
                f"cannot connect to zeusd at {address}: {exc.strerror or exc}"
            ) from exc
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def peer_has_closed(self) -> bool:
        """True if the daemon closed this (idle) connection, e.g. because it restarted."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise ZeusdTimeoutError(f"sending to {self.address} timed out") from exc
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc

    def receive(self) -> Any:
        """The next message the daemon sends. Raises ConnectionClosed at EOF."""
        try:
            line = self._reader.readline()
        except TimeoutError as exc:
            raise ZeusdTimeoutError(f"no reply from {self.address} in {self.timeout} s") from exc
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc
        if not line.endswith(b"\n"):
            raise ConnectionClosed("the daemon closed the connection")
        try:
            return json.loads(line)
        except ValueError as exc:
            raise ZeusdProtocolError(f"reply is not JSON: {line[:200]!r}") from exc

    def receive_reply(self, request_id: int) -> dict[str, Any]:
        """Read until the response carrying *request_id* (skipping pushed notifications)."""
        while True:
            message = self.receive()
            if not isinstance(message, dict):
                raise ZeusdProtocolError(f"unexpected reply: {message!r}"[:300])
            if "method" in message:
                continue  # a subscription's notification; this client does not subscribe
            if message.get("id") == request_id:
                return message
            if message.get("id") is None and "error" in message:
                # The daemon could not tell which request this was (a Parse error).
                return message


def env_address(environ: dict[str, str] | None = None) -> Address:
    """``ZEUSD_SOCK_PATH`` first, then ``ZEUSD_HOST_PORT``, else the daemon's default path."""
    env = os.environ if environ is None else environ
    if path := env.get("ZEUSD_SOCK_PATH"):
        return Address.unix(path)
    if host_port := env.get("ZEUSD_HOST_PORT"):
        return Address.tcp(host_port)
    return Address.unix(DEFAULT_SOCKET_PATH)
