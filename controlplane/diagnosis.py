"""The expert's diagnosis of a fleet from the store's recent windows (`domain.diagnosis` decides):
what `slatune diagnose`, `GET /api/v1/diagnosis` and the live table show."""

from __future__ import annotations

from collections.abc import Mapping

from domain.diagnosis import Finding, device_utilization, diagnose, look_of, series
from domain.spec import FleetSpec, Knobs
from store import queries
from store.db import Store

DEFAULT_SECONDS = 60.0


def findings(
    store: Store, spec: FleetSpec, knobs: Mapping[str, Knobs], now: float, seconds: float = DEFAULT_SECONDS
) -> list[Finding]:
    """Every finding over the last `seconds`, most severe first."""
    since = now - seconds
    with store.session() as session:
        windows = queries.diagnosis_windows(session, since)
        per_server = queries.server_utilization(session, since)
    looks = {
        name: look_of(spec, name, windows[name], knobs[name])
        for name in spec.model_names
        if windows.get(name) and name in knobs
    }
    compute, bulk = series(spec, {name: windows.get(name, []) for name in spec.model_names})
    return diagnose(spec, looks, device_utilization(spec, per_server), compute, bulk)
