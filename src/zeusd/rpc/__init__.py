"""The JSON-RPC layer: line framing, request checking, method table and dispatch (no I/O)."""
