"""``GET /metrics``: the exposition of the daemon's own registry, made by prometheus_client."""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from zeusd.metrics.collector import ZeusdCollector
from zeusd.metrics.gauges import GpuGauges


class Exporter:
    """What the HTTP front end calls for a scrape; access is checked before it is called."""

    #: The classic text format (what generate_latest writes), which every Prometheus reads.
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self, collector: ZeusdCollector, gauges: GpuGauges) -> None:
        # Our own registry, not the library's global one: no process or platform collectors
        # of the library's, and nothing a library we import might register.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._gauges = gauges

    async def scrape(self) -> bytes:
        """The exposition now. Waits for no GPU; the first scrape after a pause waits for
        the poller's first readings, at most ``FIRST_READINGS_S``."""
        if self._gauges.scraped():
            await self._gauges.first_readings()
        return generate_latest(self._registry)
