"""The control plane's own metrics, on an explicit registry (never the global one), served at
/metrics beside the collectors' (they share the registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_cycles = Counter("slatune_reconcile_cycles_total", "Reconciler cycles run", registry=r)
        self.reconfigurations = Counter(
            "slatune_reconfigurations_total",
            "Desired configurations the reconciler settled, by outcome (applied, unchanged, failed) and path",
            ["model", "outcome", "path"],
            registry=r,
        )
        self.reconcile_failures = Counter(
            "slatune_reconcile_failures_total",
            "Applies that failed, by kind (temporary: retried with backoff; permanent: recorded as failed)",
            ["model", "kind"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "slatune_apply_seconds",
            "Time of one apply through the runtime",
            buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
            registry=r,
        )
        self.desired_pending = Gauge(
            "slatune_desired_pending", "Desired configurations not applied yet", registry=r
        )
        self.recovered = Counter(
            "slatune_journal_recovered_total",
            "Open journal entries found at start-up, by what Triton showed (applied, interrupted)",
            ["outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "slatune_alerts_received_total",
            "Alerts received on the Alertmanager webhook",
            ["alertname", "status"],
            registry=r,
        )
        self.decisions = Counter(
            "slatune_policy_decisions_total",
            "Decisions of the alert policy, by action (propose, none)",
            ["action"],
            registry=r,
        )
        self.http_requests = Counter(
            "slatune_http_requests_total",
            "REST API requests, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "slatune_http_request_seconds",
            "REST API request time, by route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )

    def known_models(self, models: list[str]) -> None:
        """Export each model's failure counters at 0 from the start, so a rate over them (the
        reconciler-failing alert) has a series to read before the first failure."""
        for model in models:
            for kind in ("temporary", "permanent"):
                self.reconcile_failures.labels(model, kind)
