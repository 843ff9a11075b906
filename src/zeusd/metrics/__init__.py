"""Prometheus metrics: what the daemon counts, the GPU readings polled while scrapes come,
and the exposition of both for ``GET /metrics`` (PROTOCOL.md section 9)."""
