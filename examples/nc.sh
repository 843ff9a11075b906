#!/usr/bin/env bash
# Talk to zeusd with nc (Debian's netcat-openbsd): one JSON-RPC request per line in, one
# response per line out.
# Usage: examples/nc.sh [SOCKET_PATH]   (default: $ZEUSD_SOCK_PATH or /tmp/zeusd.sock)
set -euo pipefail
sock=${1:-${ZEUSD_SOCK_PATH:-/tmp/zeusd.sock}}

# -U: a Unix socket. -N: half-close the socket when our input ends; zeusd then answers
# everything it has read and closes, which ends nc. (For TCP: nc -N 127.0.0.1 4938.)
nc -U -N "$sock" <<'JSON'
{"jsonrpc":"2.0","method":"gpu.get_power_limit_constraints","params":{"gpu_ids":[0]},"id":1}
{"jsonrpc":"2.0","method":"gpu.set_power_limit","params":{"gpu_ids":[0],"power_limit_mw":275000},"id":2}
{"jsonrpc":"2.0","method":"gpu.get_power_limit","params":{"gpu_ids":[0]},"id":3}
{"jsonrpc":"2.0","method":"gpu.set_power_limit","params":{"gpu_ids":[0],"power_limit_mw":1},"id":4}
{"jsonrpc":"2.0","method":"gpu.reset_power_limit","params":{"gpu_ids":[0]},"id":5}
JSON
