"""Wiring a collector to a fleet: the store learns the fleet's servers and models, and every
model's starting knobs are its first configuration version."""

from __future__ import annotations

import time
from collections.abc import Mapping

from collectors.collector import Collector, Target
from collectors.nvml import NvmlCollector
from collectors.selfmetrics import CollectorMetrics
from domain.spec import FleetSpec
from runtime.server import Endpoints
from store import queries
from store.db import Store


def register_fleet(store: Store, spec: FleetSpec, endpoints: Mapping[str, Endpoints]) -> dict[str, int]:
    """Record the fleet's servers and models; give each model without one an applied version
    (its starting knobs, actor "startup"). Returns model ids by name."""
    servers = [
        queries.ServerInfo(s.name, endpoints[s.name].grpc, endpoints[s.name].metrics_url, not s.attached)
        for s in spec.servers
    ]
    models = [
        queries.ModelInfo(
            m.name,
            m.server,
            m.role,
            m.device,
            m.sla.metric if m.sla else None,
            m.sla.target_ms if m.sla else None,
        )
        for m in spec.models
    ]
    with store.session() as session:
        ids = queries.sync_fleet(session, servers, models)
        versions = queries.applied_versions(session)
        for m in spec.models:
            if m.name not in versions:
                queries.record_applied(
                    session, m.name, m.knobs.model_dump(), "startup", "the spec's starting knobs", time.time()
                )
    return ids


def fleet_collector(
    store: Store,
    spec: FleetSpec,
    endpoints: Mapping[str, Endpoints],
    *,
    interval_s: float = 1.0,
    metrics: CollectorMetrics | None = None,
    nvml: bool = True,
    retention_raw_s: float | None = 6 * 3600,
) -> Collector:
    register_fleet(store, spec, endpoints)
    targets = [Target(s.name, endpoints[s.name].metrics_url) for s in spec.servers]
    return Collector(
        store,
        targets,
        interval_s=interval_s,
        metrics=metrics,
        nvml=NvmlCollector() if nvml else None,
        retention_raw_s=retention_raw_s,
    )
