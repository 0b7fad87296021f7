"""Every dashboard query and every rule against a real Prometheus and Alertmanager, configured by
`slatune prometheus config`, scraping the real default fleet (tritonserver) and slatune's /metrics
under traffic to every model, a short tuning run and a broken SLA:

- each panel query, annotation and variable, and each rule, returns data (for an alert or an
  annotation: what it compares, since its condition is empty while nothing is wrong; for `a or b`,
  either side: GPU metrics, else the CPU's);
- every metric a panel or rule reads exists in what Prometheus scraped (the `nv_gpu_*` ones only on
  a host with a GPU), or is recorded by the rules, or is Prometheus's own ALERTS;
- an alert fired by the generated rules reaches slatune's webhook through the generated
  Alertmanager route with the bearer token."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from controlplane.app import create_app
from controlplane.cli import app
from controlplane.serve import ApiServer
from dashboards.build import expressions, render
from dashboards.rules import expressions as rule_expressions
from dashboards.rules import recording_rules
from runtime.load import LoadRun, ModelLoad, targets_for
from tests.conftest import pids_running
from tests.integration.conftest import TOKEN, Api
from tests.promql import metrics, signals, substitute
from tests.promstack import free_port, run_alertmanager, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 120.0


def all_expressions() -> list[tuple[str, str]]:
    out = [
        (f"{stem}: {where}", expr) for stem, model in render().items() for where, expr in expressions(model)
    ]
    return out + [(f"rule {name}", expr) for name, expr in rule_expressions()]


def has_data(client: httpx.Client, prom: str, expr: str) -> bool:
    resp = client.get(f"{prom}/api/v1/query", params={"query": expr})
    assert resp.status_code == 200, f"Prometheus refused {expr!r}: {resp.text}"
    return bool(resp.json()["data"]["result"])


def without_data(client: httpx.Client, prom: str) -> list[str]:
    """Each expression with a group of signals none of which returns data now."""
    missing = []
    for where, expr in all_expressions():
        for group in signals(expr):
            if not any(has_data(client, prom, substitute(s)) for s in group):
                missing.append(f"{where}: {' | '.join(group)}")
    return missing


def config(tmp: Path, server_url: str, data_dir: Path, alertmanager: str | None) -> Path:
    out = tmp / "promconfig"
    argv = ["prometheus", "config", "--out", str(out), "--data-dir", str(data_dir), "--slatune-url", server_url,
            "--scrape-interval", "1s", "--evaluation-interval", "1s"]  # fmt: skip
    result = CliRunner().invoke(app, argv + (["--alertmanager", alertmanager] if alertmanager else []))
    assert result.exit_code == 0, result.output
    return out


def test_every_panel_query_and_rule_returns_data_from_prometheus_scraping_the_fleet_and_slatune(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLATUNE_API_TOKEN", TOKEN)
    began = time.monotonic()
    server = ApiServer(create_app(api.plane, TOKEN), "127.0.0.1", free_port())
    server.start()
    loads = [
        ModelLoad("safety-guard", rate=10, words=(8, 16)),
        ModelLoad("chat-llm", rate=1, words=(8, 16), max_tokens=4),
        ModelLoad("embeddings", rate=2, batch=4, words=(8, 16)),
        ModelLoad("reranker", rate=1, batch=2, words=(8, 16)),
    ]
    load = LoadRun(
        loads, targets_for(api.fleet.spec, lambda s: api.fleet.endpoints(s).grpc), duration_s=DEADLINE_S + 30,
        max_requests=4000,
    )  # fmt: skip
    data_dir = api.plane.settings.data_dir
    try:
        # a target no request can meet: the guard's SLA breaks, so the SLA and burn-rate alerts fire
        r = api.client.put(
            "/api/v1/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 0.001}
        )
        assert r.status_code == 200
        load.start()
        # a short tuning run: trials to plot, reconfigurations to mark
        r = api.client.post("/api/v1/tuning", json={"budget": 2, "window_s": 2, "warmup_s": 0})
        assert r.status_code in (200, 201, 202), r.text
        first = config(tmp_path, server.url, data_dir, None)
        am_config = yaml.safe_load((first / "alertmanager.yml").read_text())
        am_config["route"].update(
            group_wait="1s", group_interval="1s"
        )  # the shipped route, without the patience
        with run_alertmanager(tmp_path, am_config) as am:
            out = config(tmp_path, server.url, data_dir, am.address)
            prom_config = yaml.safe_load((out / "prometheus.yml").read_text())
            # the shipped rules, without the patience (as test_alerting does)
            rules = re.sub(r"for: \S+", "for: 0s", (out / "slatune-rules.yml").read_text())
            with (
                run_prometheus(tmp_path, prom_config, {"slatune-rules.yml": rules}) as prom,
                httpx.Client(trust_env=False, timeout=10.0) as client,
            ):
                started = time.monotonic()
                missing, fired = ["not asked yet"], []
                while time.monotonic() - started < DEADLINE_S:
                    time.sleep(3)
                    fired = [
                        a for a in api.client.get("/api/v1/alerts").json() if a["alertname"] == "SlaBroken"
                    ]
                    missing = without_data(client, prom.url)
                    if not missing and fired:
                        break
                data_s = time.monotonic() - started
                assert missing == [], f"no data after {data_s:.0f} s for:\n" + "\n".join(missing)
                assert fired and fired[0]["model"] == "safety-guard", "SlaBroken never reached the webhook"

                targets = client.get(f"{prom.url}/api/v1/targets").json()["data"]["activeTargets"]
                assert {(t["labels"]["job"], t["health"]) for t in targets} == {
                    ("triton", "up"),
                    ("slatune", "up"),
                }
                scraped = set(client.get(f"{prom.url}/api/v1/label/__name__/values").json()["data"])
                recorded = {r["record"] for r in recording_rules()}
                used = set().union(*(metrics(e) for _, e in all_expressions()))
                absent = sorted(used - scraped - recorded - {"ALERTS"})
                # GPU metrics are absent on this host; a diagnosis finding is exported only while it fires.
                expected = [m for m in absent if m.startswith("nv_gpu_") or m == "slatune_diagnosis_finding"]
                assert absent == expected, f"never scraped: {sorted(set(absent) - set(expected))}"
                print(
                    f"\n{len(all_expressions())} expressions returned data {data_s:.0f} s after Prometheus started "
                    f"({time.monotonic() - began:.0f} s in all); GPU-only metrics absent here: {absent}"
                )
    finally:
        load.stop()
        load.join()
        api.client.put("/api/v1/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 20})
        for run in api.client.get("/api/v1/tuning").json():
            if run.get("status") == "running":
                api.client.post(f"/api/v1/tuning/{run['id']}/stop")
        server.stop()
    assert pids_running(str(tmp_path)) == []
