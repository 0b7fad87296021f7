"""Dashboards as code (dashboards/): the committed JSON and rules are what the code generates, every
query and rule parses as PromQL, the provisioning files point where push and the dashboards do, and
`slatune prometheus config` writes a scrape configuration, the rules and an Alertmanager route."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from controlplane.cli import app
from controlplane.exported import knob_values
from dashboards import __main__ as generate
from dashboards.build import FOLDER_UID, expressions, render
from dashboards.prometheus import metrics_urls
from dashboards.push import DATASOURCE_UID
from dashboards.rules import expressions as rule_expressions
from dashboards.rules import rule_groups
from domain.spec import FleetSpec, Knobs, resolve_spec
from tests.promql import metrics, parse, signals

DASHBOARDS = Path(generate.__file__).parent


def test_the_committed_dashboards_and_rules_are_what_the_code_generates() -> None:
    stale = [
        str(p.relative_to(generate.ROOT))
        for p, text in generate.generated().items()
        if not p.exists() or p.read_text() != text
    ]
    assert stale == [], f"run `python -m dashboards` and commit: {stale}"
    assert sorted(p.name for p in (DASHBOARDS / "json").glob("*.json")) == [
        "alerts.json",
        "fleet-overview.json",
        "slo.json",
        "tuning.json",
    ]


def all_queries() -> list[tuple[str, str]]:
    out = [
        (f"{stem}: {where}", expr) for stem, model in render().items() for where, expr in expressions(model)
    ]
    return out + [(f"rule {name}", expr) for name, expr in rule_expressions()]


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[w for w, _ in all_queries()])
def test_every_query_and_rule_parses_as_promql(where: str, expr: str) -> None:
    parse(expr)
    assert signals(expr), where


def test_the_dashboards_cover_what_the_issue_asks() -> None:
    used = {stem: set().union(*(metrics(e) for _, e in expressions(m))) for stem, m in render().items()}
    assert {
        "nv_inference_request_success", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_request_failure",
        "nv_gpu_utilization", "nv_cpu_utilization", "nv_gpu_memory_used_bytes", "nv_cpu_memory_used_bytes",
        "slatune_sla_value_ms", "slatune_sla_target_ms", "slatune_device_memory_budget_bytes",
    } <= used["fleet-overview"]  # fmt: skip
    assert {
        "slatune_slo_attainment",
        "slatune_slo_error_budget_remaining",
        "slatune:slo_burn_rate:rate1h",
    } <= used["slo"]
    assert {
        "slatune_model_knob",
        "slatune_tuning_trial_objective",
        "slatune_controller_actions_total",
    } <= used["tuning"]
    assert {"ALERTS", "slatune_alerts_received_total", "slatune_policy_decisions_total"} <= used["alerts"]
    uids = [m["uid"] for m in render().values()]
    assert len(set(uids)) == len(uids)
    annotations = render()["tuning"]["annotations"]["list"]
    assert [a["titleFormat"] for a in annotations] == [
        "{{model}} reconfigured ({{path}})",
        "controller: {{kind}}",
    ]


def test_the_rules_hold_the_sre_workbook_burn_rate_pairs_and_the_operational_alerts() -> None:
    alerts = {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}
    fast = alerts["SloErrorBudgetBurnFast"]["expr"]
    assert "rate1h > 14.4 and slatune:slo_burn_rate:rate5m > 14.4" in fast
    assert "rate6h > 6 and slatune:slo_burn_rate:rate30m > 6" in fast
    slow = alerts["SloErrorBudgetBurnSlow"]["expr"]
    assert "rate1d > 3 and slatune:slo_burn_rate:rate2h > 3" in slow
    assert "rate3d > 1 and slatune:slo_burn_rate:rate6h > 1" in slow
    assert {
        "SlaBroken", "TritonFailureRate", "TritonPendingRequestsGrowing", "DeviceMemoryNearBudget",
        "DeviceMemoryNearFull", "SlatuneCollectorStale", "SlatuneCollectorStalled", "SlatuneReconcileFailing",
    } <= set(alerts)  # fmt: skip
    assert alerts["SlaBroken"]["expr"] == "slatune_sla_met == 0" and alerts["SlaBroken"]["for"] == "30s"


def test_the_provisioning_files_name_the_datasource_and_folder_push_uses() -> None:
    ds = yaml.safe_load((DASHBOARDS / "provisioning" / "datasource.yaml").read_text())
    assert [(d["uid"], d["type"]) for d in ds["datasources"]] == [(DATASOURCE_UID, "prometheus")]
    providers = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yaml").read_text())["providers"]
    assert [(p["folderUid"], p["type"]) for p in providers] == [(FOLDER_UID, "file")]
    for model in render().values():  # every panel reads the datasource variable, provisioned or pushed
        for target in (t for p in model["panels"] for t in p.get("targets", [])):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize(
    ("knobs", "resources", "expected"),
    [
        # defaults; compute_priority default is 0
        (Knobs(), (), {"instances": 1.0, "compute_priority": 0.0, "preferred_batch_size_max": 0.0}),
        # min is -1; the largest preferred size; a resource the server has but the model dropped is 0
        (
            Knobs(compute_priority="min", preferred_batch_sizes=(4, 8), resources={"compute": 2}),
            ("compute", "io"),
            {
                "compute_priority": -1.0,
                "preferred_batch_size_max": 8.0,
                "resources.compute": 2.0,
                "resources.io": 0.0,
            },
        ),
    ],
)
def test_knob_values(knobs: Knobs, resources: tuple[str, ...], expected: dict[str, float]) -> None:
    values = knob_values(knobs, resources)
    assert {k: values[k] for k in expected} == expected
    assert len(values) == 8 + len(set(resources) | set(knobs.resources))


def spec_with_ports() -> FleetSpec:
    data = resolve_spec(None).model_dump(mode="json")
    data["servers"][0]["metrics_port"] = 18002
    data["servers"].append(
        {"name": "prod", "http_url": "http://10.0.0.5:8000", "grpc_url": "10.0.0.5:8001",
         "metrics_url": "https://10.0.0.5:8002/custom/metrics"}
    )  # fmt: skip
    return FleetSpec.model_validate(data)


def test_metrics_urls_come_from_the_running_fleet_else_the_spec_else_an_error_naming_the_server() -> None:
    spec = spec_with_ports()
    assert metrics_urls(spec) == {
        "triton0": "http://127.0.0.1:18002/metrics",
        "prod": "https://10.0.0.5:8002/custom/metrics",
    }
    assert (
        metrics_urls(spec, {"triton0": "http://127.0.0.1:9/metrics"})["triton0"]
        == "http://127.0.0.1:9/metrics"
    )
    with pytest.raises(ValueError, match="triton0"):
        metrics_urls(resolve_spec(None))


def test_prometheus_config_writes_scrape_jobs_rules_and_an_alertmanager_route_with_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path = tmp_path / "fleet.yaml"
    spec_path.write_text(yaml.safe_dump(spec_with_ports().model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("SLATUNE_API_TOKEN", "a-strong-token-0123456789")
    out = tmp_path / "prom"
    result = CliRunner().invoke(
        app,
        ["prometheus", "config", "--out", str(out), "--spec", str(spec_path), "--data-dir", str(tmp_path / "d"),
         "--slatune-url", "http://127.0.0.1:8780", "--alertmanager", "127.0.0.1:9093"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["triton"]["static_configs"] == [
        {"targets": ["10.0.0.5:8002"], "labels": {"server": "prod", "__metrics_path__": "/custom/metrics", "__scheme__": "https"}},
        {"targets": ["127.0.0.1:18002"], "labels": {"server": "triton0", "__metrics_path__": "/metrics", "__scheme__": "http"}},
    ]  # fmt: skip
    assert jobs["slatune"]["static_configs"] == [{"targets": ["127.0.0.1:8780"]}]
    assert config["rule_files"] == ["slatune-rules.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]
    assert yaml.safe_load((out / "slatune-rules.yml").read_text()) == rule_groups()
    am = yaml.safe_load((out / "alertmanager.yml").read_text())
    (hook,) = am["receivers"][0]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:8780/api/v1/alerts" and hook["send_resolved"] is True
    token_file = Path(hook["http_config"]["authorization"]["credentials_file"])
    assert token_file.read_text().strip() == "a-strong-token-0123456789"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "a-strong-token" not in (out / "alertmanager.yml").read_text()  # never inline


def test_prometheus_config_without_a_spec_or_running_fleet_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["prometheus", "config", "--out", str(tmp_path), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "no running fleet" in result.output


def test_the_generated_json_is_valid_grafana_json() -> None:
    for stem in ("fleet-overview", "slo", "tuning", "alerts"):
        model = json.loads((DASHBOARDS / "json" / f"{stem}.json").read_text())
        assert model["schemaVersion"] >= 39 and model["uid"].startswith("slatune-")
        assert all("gridPos" in p for p in model["panels"])
