"""The trio layer: listeners, connections, and the daemon's lifetime (start, drain, stop)."""
