"""A collector for a fleet: one target per server's metrics page. The store must know the fleet
first (`controlplane.startup.register_fleet`): windows are stored against its models.

With `prometheus_url` the readings come from that Prometheus (`collectors.prometheus`), which must
scrape the fleet's servers with each target labelled by its server's name (`server_label`, as
`slatune prometheus config` does); the servers' trace files are then not read."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from collectors.collector import Collector, Target
from collectors.nvml import NvmlCollector
from collectors.prometheus import PrometheusSource
from collectors.selfmetrics import CollectorMetrics
from domain.spec import FleetSpec
from runtime.server import Endpoints
from store.db import Store


def fleet_collector(
    store: Store,
    spec: FleetSpec,
    endpoints: Mapping[str, Endpoints],
    *,
    interval_s: float = 1.0,
    metrics: CollectorMetrics | None = None,
    nvml: bool = True,
    retention_raw_s: float | None = 6 * 3600,
    prometheus_url: str | None = None,
    prometheus_lookback_s: float = 60.0,
    prometheus_server_label: str = "server",
) -> Collector:
    # Each server's target knows its models: a page naming another server's model gives it nothing.
    targets = [
        Target(
            s.name,
            endpoints[s.name].metrics_url,
            frozenset(m.name for m in spec.models if m.server == s.name),
            # Read beside Prometheus' samples, a trace would put a request in a window other than
            # the one its counters are in (the trace is read at the pass, the sample is older).
            _trace_dir(endpoints[s.name]) if prometheus_url is None else None,
            frozenset(m.name for m in spec.models if m.server == s.name and m.streaming),
            _cores(spec, s.name),
        )
        for s in spec.servers
    ]
    source = None
    if prometheus_url is not None:
        source = PrometheusSource(
            prometheus_url,
            lookback_s=prometheus_lookback_s,
            server_label=prometheus_server_label,
            deadline_s=max(2 * interval_s, 5.0),
            clock=time.time,
        )
    return Collector(
        store,
        targets,
        interval_s=interval_s,
        metrics=metrics,
        nvml=NvmlCollector() if nvml else None,
        retention_raw_s=retention_raw_s,
        source=source,
    )


def _trace_dir(endpoints: Endpoints) -> Path | None:
    return None if endpoints.trace_dir is None else Path(endpoints.trace_dir)


def _cores(spec: FleetSpec, server: str) -> frozenset[int] | None:
    cores = None if spec.server(server).attached else spec.server_cores(server)
    return None if cores is None else frozenset(cores)
