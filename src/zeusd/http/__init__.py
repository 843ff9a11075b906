"""The HTTP front end: upstream zeusd's REST API over the same core (no I/O here)."""
