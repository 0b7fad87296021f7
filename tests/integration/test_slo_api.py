"""The SLO endpoint and the SLO metrics over windows written to a real store (SQLite and
PostgreSQL), through the real FastAPI app. The fleet is not started: these read only the store,
and a fixed clock makes the span exact."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane import startup
from controlplane.app import create_app
from controlplane.plane import ControlPlane
from controlplane.settings import Settings
from domain.spec import resolve_spec
from domain.windows import ModelWindow
from runtime.fleet import Fleet
from runtime.server import Endpoints
from store import queries
from store.db import Store
from tests.integration.conftest import TOKEN

pytestmark = pytest.mark.integration

V1 = "/api/v1"
NOW = 1_000_000.0
INF = math.inf


def guard(start: float, end: float, buckets: dict[float, float], **fields: Any) -> ModelWindow:
    failed = sum(fields.get("failures", {}).values())
    return ModelWindow(
        model="safety-guard", start=NOW + start, end=NOW + end, requests=buckets[INF] + failed,
        success=buckets[INF], latency_buckets=buckets, latency_source="client", **fields,
    )  # fmt: skip


# safety-guard's SLA (the default fleet's): latency p99 <= 20 ms over 60 s, objective 0.99.
WINDOWS = [
    # A, before the spans below: 100 requests in (10, 30] ms, 50 of them within 20 ms (interpolated)
    guard(-130, -129, {10.0: 0, 30.0: 100, INF: 100}),
    # B, 2 s: 1000 within 10 ms
    guard(-100, -98, {10.0: 1000, 30.0: 1000, INF: 1000}),
    # C, 10 s: 500 within 10 ms
    guard(-50, -40, {10.0: 500, 30.0: 500, INF: 500}),
    # D, 10 s: 100 within 10 ms, 100 in (10, 30] (50 within 20 ms), 10 rejected: 150 good of 210
    guard(-10, 0, {10.0: 100, 30.0: 200, INF: 200}, failures={"rejected": 10}),
]


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, ControlPlane]]:
    spec = resolve_spec(None)
    fake = Endpoints("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")
    startup.register_fleet(store, spec, {s.name: fake for s in spec.servers})
    with store.session() as session:
        ids = queries.model_ids(session)
        queries.add_windows(session, ids, WINDOWS, {}, resolution_s=1.0)
        bulk = ModelWindow(model="embeddings", start=NOW - 5, end=NOW, requests=7, success=7)
        queries.add_windows(session, ids, [bulk], {}, resolution_s=1.0)
    settings = Settings(data_dir=tmp_path, api_token=TOKEN)  # type: ignore[arg-type]
    plane = ControlPlane(settings, store, Fleet(spec, tmp_path / "fleet"), clock=lambda: NOW)
    with TestClient(create_app(plane, TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c, plane


def slo(client: TestClient, model: str, seconds: float) -> Any:
    r = client.get(f"{V1}/models/{model}/slo", params={"seconds": seconds})
    assert r.status_code == 200, r.text
    return r.json()


def test_slo_over_the_last_seconds(client: tuple[TestClient, ControlPlane]) -> None:
    c, _ = client
    got = slo(c, "safety-guard", 120)
    assert {k: got[k] for k in ("model", "metric", "target_ms", "window_s", "objective", "start", "end")} == {
        "model": "safety-guard", "metric": "latency_p99", "target_ms": 20.0, "window_s": 60.0, "objective": 0.99,
        "start": NOW - 120, "end": NOW,
    }  # fmt: skip
    # B, C and D end in the last 120 s: 1000 + 500 + 150 good of 1000 + 500 + 210 = 1650 / 1710
    assert got["requests"] == pytest.approx(1710) and got["good"] == pytest.approx(1650)
    assert got["attainment"] == pytest.approx(1650 / 1710)
    # burn (60 / 1710) / (1 - 0.99) = 3.51: the budget is spent, shown as 0
    assert got["burn_rate"] == pytest.approx(60 / 1710 / 0.01)
    assert got["error_budget_remaining"] == 0.0
    # rolling 60 s p99: B with A 1050/1100 = 95.5% no (2 s); C with B 1500/1500 yes (10 s);
    # D with C 650/710 = 91.5% no (10 s): met 10 s of 22
    assert got["p99_met_fraction"] == pytest.approx(10 / 22) and got["p99_judged_s"] == pytest.approx(22)

    # the last 30 s: D alone, 150/210; its rolling p99 still looks back at C (not met)
    got = slo(c, "safety-guard", 30)
    assert got["attainment"] == pytest.approx(150 / 210) and got["p99_met_fraction"] == 0.0

    assert slo(c, "embeddings", 120) is None  # bulk: no SLA to judge by
    got = slo(c, "chat-llm", 120)  # an SLA, no windows: nothing to judge
    assert got["requests"] == 0
    assert (got["attainment"], got["burn_rate"], got["p99_met_fraction"]) == (None, None, None)
    r = c.get(f"{V1}/models/nope/slo")
    assert r.status_code == 404 and r.json()["field"] == "path.model"
    r = c.get(f"{V1}/models/safety-guard/slo", params={"seconds": 0})
    assert r.status_code == 422 and r.json()["field"] == "query.seconds"


def test_the_sla_a_person_sets_is_what_the_slo_judges(client: tuple[TestClient, ControlPlane]) -> None:
    c, plane = client
    sla = {"metric": "latency_p99", "target_ms": 30, "window_s": 120, "objective": 0.9}
    r = c.put(f"{V1}/models/safety-guard/sla", json=sla)
    assert r.status_code == 200, r.text
    assert c.get(f"{V1}/models/safety-guard/sla").json() == {**sla, "target_ms": 30.0, "window_s": 120.0}
    got = slo(c, "safety-guard", 120)
    # within 30 ms: B 1000, C 500, D 200 of 210: 1700 / 1710; burn (10 / 1710) / 0.1
    assert got["attainment"] == pytest.approx(1700 / 1710)
    assert got["burn_rate"] == pytest.approx(10 / 1710 / 0.1)
    assert got["error_budget_remaining"] == pytest.approx(1 - 10 / 1710 / 0.1)
    # rolling 120 s: B (with A, all within 30 ms) yes, C yes, D with B and C 1700/1710 = 99.4% yes
    assert got["p99_met_fraction"] == 1.0
    assert plane.slas()["safety-guard"].window_s == 120.0  # what tuning runs keep


def test_summary_and_metrics_carry_the_slo_over_the_sla_window(
    client: tuple[TestClient, ControlPlane],
) -> None:
    c, plane = client
    s = plane.summaries()["safety-guard"].slo
    assert s is not None and (s.start, s.end) == (NOW - 60, NOW)  # the SLA's window, not the summary's 30 s
    # C and D end in the last 60 s: 650 good of 710; burn (60 / 710) / 0.01
    assert s.attainment == pytest.approx(650 / 710)
    samples = {
        (sample.name, sample.labels.get("model")): sample.value
        for family in text_string_to_metric_families(c.get("/metrics").text)
        for sample in family.samples
    }
    assert samples[("slatune_slo_attainment", "safety-guard")] == pytest.approx(650 / 710)
    assert samples[("slatune_slo_burn_rate", "safety-guard")] == pytest.approx(60 / 710 / 0.01)
    assert samples[("slatune_slo_error_budget_remaining", "safety-guard")] == 0.0
    assert ("slatune_slo_attainment", "chat-llm") not in samples  # an SLA without traffic: no figure
    assert ("slatune_slo_attainment", "embeddings") not in samples  # no SLA
    assert ("slatune_sla_target_ms", "safety-guard") in samples  # the SLA's own metrics stay
