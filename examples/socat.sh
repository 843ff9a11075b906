#!/usr/bin/env bash
# Talk to zeusd with socat: one JSON-RPC request per line in, one response per line out.
# Usage: examples/socat.sh [SOCKET_PATH]   (default: $ZEUSD_SOCK_PATH or /tmp/zeusd.sock)
set -euo pipefail
sock=${1:-${ZEUSD_SOCK_PATH:-/tmp/zeusd.sock}}

# -t 2: after our input ends, wait up to 2 s for the replies still on their way.
socat -t 2 - "UNIX-CONNECT:$sock" <<'JSON'
{"jsonrpc":"2.0","method":"discover","id":1}
{"jsonrpc":"2.0","method":"gpu.set_power_limit","params":{"gpu_ids":[0],"power_limit_mw":300000},"id":2}
{"jsonrpc":"2.0","method":"gpu.get_power_limit","params":{"gpu_ids":[0]},"id":3}
{"jsonrpc":"2.0","method":"gpu.reset_power_limit","params":{"gpu_ids":[0]}}
[{"jsonrpc":"2.0","method":"gpu.get_power","id":4},{"jsonrpc":"2.0","method":"time","id":5}]
JSON
