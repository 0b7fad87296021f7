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
            "Scrapes that failed, by reason: unreachable, http_error, timeout (no whole page within the "
            "deadline), too_large, truncated, malformed, missing_family, bad_value (a NaN, infinite or "
            "negative count), bad_le, bad_quantile, error",
            ["server", "reason"],
            registry=self.registry,
        )
        self.stale_servers = Gauge(
            "slatune_stale_servers", "Servers whose last scrape failed", registry=self.registry
        )
        self.ignored_models = Counter(
            "slatune_scrape_ignored_models_total",
            "Models a server's page named that the fleet does not give to that server (no windows)",
            ["server"],
            registry=self.registry,
        )
        self.windows_pending = Gauge(
            "slatune_windows_pending",
            "Per-model windows kept for a store that did not answer, written when it answers again",
            registry=self.registry,
        )
        self.windows_dropped = Counter(
            "slatune_windows_dropped_total",
            "Per-model windows never written, by reason: buffer_full (the oldest kept during a store "
            "outage), rejected (the store refused them)",
            ["reason"],
            registry=self.registry,
        )
        self.store_failures = Counter(
            "slatune_store_write_failures_total",
            "Writes of one server's windows that failed, by kind (unavailable, rejected)",
            ["kind"],
            registry=self.registry,
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
