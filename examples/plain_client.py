"""Talk to zeusd from Python with nothing but the standard library.

Usage: python examples/plain_client.py [SOCKET_PATH]
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
from typing import Any


class Zeusd:
    """A minimal line-delimited JSON-RPC 2.0 client over a Unix socket."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._lines = self._sock.makefile("rb")
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        response = json.loads(self._lines.readline())
        if "error" in response:
            error = response["error"]
            raise RuntimeError(
                f"{method}: {error['message']} ({error['code']}): {error.get('data')}"
            )
        return response["result"]

    def close(self) -> None:
        self._lines.close()
        self._sock.close()


def main() -> None:
    path = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ZEUSD_SOCK_PATH", "/tmp/zeusd.sock")
    )
    zeusd = Zeusd(path)
    try:
        gpus = zeusd.call("discover")["gpus"]
        print(f"{len(gpus)} GPUs:", ", ".join(g["name"] for g in gpus))
        print("limits before:", zeusd.call("gpu.get_power_limit"))
        zeusd.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=250_000)
        print("GPU 0 after:  ", zeusd.call("gpu.get_power_limit", gpu_ids=[0]))
        zeusd.call("gpu.reset_power_limit", gpu_ids=[0])
        try:
            zeusd.call("gpu.set_power_limit", gpu_ids=[0], power_limit_mw=5)
        except RuntimeError as exc:
            print("refused as expected:", exc)
    finally:
        zeusd.close()


if __name__ == "__main__":
    main()
