"""slatune's own metrics about collection, on an explicit registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.scrapes = Counter(
            "slatune_scrapes_total", "Metrics pages scraped", ["server"], registry=self.registry
        )
        self.scrape_failures = Counter(
            "slatune_scrape_failures_total",
            "Scrapes that failed, by reason (unreachable, malformed)",
            ["server", "reason"],
            registry=self.registry,
        )
        self.stale_servers = Gauge(
            "slatune_stale_servers", "Servers whose last scrape failed", registry=self.registry
        )
        self.windows_written = Counter(
            "slatune_windows_written_total",
            "Per-model metric windows written to the store",
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "slatune_store_write_seconds",
            "Time to write one scrape's windows to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
