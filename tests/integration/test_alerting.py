"""Alerting end to end with the real servers: Prometheus scrapes the control plane's /metrics and
evaluates slatune's shipped rules, Alertmanager delivers to slatune's webhook with the bearer
token, and the webhook records the alert."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controlplane.app import create_app
from controlplane.serve import ApiServer
from runtime.load import LoadRun, ModelLoad, targets_for
from tests.integration.conftest import TOKEN, Api
from tests.promstack import free_port, query, start_alertmanager, start_prometheus

pytestmark = pytest.mark.integration

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "slatune-rules.yml"


def test_a_broken_sla_fires_through_prometheus_and_alertmanager_to_the_webhook(
    api: Api, tmp_path: Path
) -> None:
    server = ApiServer(create_app(api.plane, TOKEN), "127.0.0.1", free_port())
    server.start()
    rules = RULES.read_text().replace("for: 30s", "for: 0s")  # the shipped rules, without the patience
    load = LoadRun(
        [ModelLoad("safety-guard", rate=20, words=(8, 16))],
        targets_for(api.fleet.spec, lambda s: api.fleet.endpoints(s).grpc), duration_s=60, max_requests=1200,
    )  # fmt: skip
    try:
        # a target no request can meet: the guard's SLA breaks as soon as it has traffic
        r = api.client.put(
            "/api/v1/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 0.001}
        )
        assert r.status_code == 200
        load.start()
        with (
            start_alertmanager(tmp_path, f"{server.url}/api/v1/alerts", TOKEN) as am,
            start_prometheus(tmp_path, [f"127.0.0.1:{server.port}"], "/metrics", rules, am.url) as prom,
        ):
            deadline = time.monotonic() + 45
            fired: list[dict[str, object]] = []
            while not fired and time.monotonic() < deadline:
                time.sleep(1)
                fired = [a for a in api.client.get("/api/v1/alerts").json() if a["alertname"] == "SlaBroken"]
            assert fired, (
                f"no alert reached the webhook; prometheus says {query(prom.url, 'slatune_sla_met')}"
            )
            assert fired[0]["model"] == "safety-guard" and fired[0]["status"] == "firing"
            assert fired[0]["labels"]["severity"] == "page"
        assert (
            'slatune_alerts_received_total{alertname="SlaBroken",status="firing"}'
            in api.client.get("/metrics").text
        )
    finally:
        load.stop()
        load.join()
        api.client.put("/api/v1/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 20})
        server.stop()
