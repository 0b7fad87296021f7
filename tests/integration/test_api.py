"""The REST API against the real fleet: propose, dry-run, apply, read back from Triton, roll back;
the bearer token; errors naming the bad field; SLAs; the alert webhook; a failed apply."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from store import configs
from store.models import TuningRun
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

V1 = "/api/v1"


def config(api: Api, model: str) -> dict[str, Any]:
    r = api.client.get(f"{V1}/models/{model}/config")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def history(api: Api, model: str) -> list[dict[str, Any]]:
    r = api.client.get(f"{V1}/models/{model}/config/history")
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


def test_propose_dry_run_apply_read_back_and_roll_back(api: Api) -> None:
    before = config(api, "embeddings")
    assert before["running"] == before["applied"]["knobs"]  # what Triton runs is what the store says
    assert before["running"]["instances"] == 2 and before["desired"] is None
    versions = len(history(api, "embeddings"))

    # dry run: the diff, the memory check and the guardrails' clips; nothing recorded, nothing applied
    r = api.client.post(
        f"{V1}/models/embeddings/config",
        json={"knobs": {"instances": 9, "max_queue_delay_us": 2000}, "dry_run": True},
    )
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["diff"] == {"instances": [2, 4], "max_queue_delay_us": [0, 2000]}
    assert [(c["knob"], c["asked"], c["got"], c["rule"]) for c in dry["clips"]] == [
        ("instances", 9, 6, "bounds"),  # embeddings instances are bounded [1, 6]
        ("instances", 6, 4, "max_step"),  # at most 2 more than the 2 running
    ]
    # 42 (chat) + 4 x 2 (embeddings) + 2 x 6 (reranker) + 1 (guard) = 63 of 80 GB
    assert dry["memory"] == {"device": "dev0", "used_gb": 63.0, "budget_gb": 80.0, "fits": True}
    assert dry["version"] is None and len(history(api, "embeddings")) == versions
    assert config(api, "embeddings")["running"] == before["running"]

    # apply and wait: the reconciler applies it; Triton reports the new knobs
    r = api.client.post(
        f"{V1}/models/embeddings/config",
        json={
            "knobs": {"instances": 3, "max_queue_delay_us": 2000},
            "reason": "more bulk throughput",
            "wait": True,
        },
    )
    assert r.status_code == 200, r.text
    applied = r.json()["version"]
    assert applied["state"] == "applied" and applied["actor"] == "person"
    assert applied["reason"] == "more bulk throughput"
    now = config(api, "embeddings")
    assert now["running"]["instances"] == 3 and now["running"]["max_queue_delay_us"] == 2000
    assert api.fleet.observed_knobs("embeddings").instances == 3  # straight from Triton
    assert now["applied"]["id"] == applied["id"] and now["desired"] is None
    hist = history(api, "embeddings")
    assert hist[0]["id"] == applied["id"] and hist[1]["id"] == before["applied"]["id"]
    assert hist[1]["state"] == "superseded"

    # the same configuration again does nothing: no version, no apply
    r = api.client.post(
        f"{V1}/models/embeddings/config", json={"knobs": {"instances": 3, "max_queue_delay_us": 2000}}
    )
    assert r.status_code == 200 and r.json()["version"] is None and r.json()["diff"] == {}
    assert len(history(api, "embeddings")) == len(hist)

    # roll back to the version before: a new version with its knobs, applied
    r = api.client.post(
        f"{V1}/models/embeddings/config/rollback", json={"version": before["applied"]["id"], "wait": True}
    )
    assert r.status_code == 200, r.text
    back = r.json()["version"]
    assert back["state"] == "applied" and back["reason"] == f"rollback to version {before['applied']['id']}"
    assert config(api, "embeddings")["running"] == before["running"]
    with api.plane.store.session() as session:  # each apply journaled, opened and closed
        entries = configs.journal(session, back["id"])
        assert [(e.outcome, e.path) for e in entries] == [("applied", "reload")]  # the delay needs a reload


def test_a_proposal_without_wait_is_accepted_and_reconciled(api: Api) -> None:
    r = api.client.post(f"{V1}/models/reranker/config", json={"knobs": {"priority": 2}})
    assert r.status_code == 202, r.text
    version = r.json()["version"]
    assert version["state"] == "desired"
    assert api.client.get(f"{V1}/models/reranker").json()["desired"]["id"] in (version["id"], None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = api.client.get(f"{V1}/models/reranker/config/versions/{version['id']}").json()
        if got["state"] != "desired":
            break
        time.sleep(0.2)
    assert got["state"] == "applied"
    assert api.fleet.observed_knobs("reranker").priority == 2
    api.client.post(f"{V1}/models/reranker/config", json={"knobs": {"priority": 1}, "wait": True})


MUTATIONS = [
    ("post", f"{V1}/models/embeddings/config", {"knobs": {"instances": 2}, "dry_run": True}),
    ("post", f"{V1}/models/embeddings/config/rollback", {"version": 1, "dry_run": True}),
    ("put", f"{V1}/models/safety-guard/sla", {"metric": "latency_p99", "target_ms": 20}),
    ("post", f"{V1}/tuning", {"budget": 2}),
    ("post", f"{V1}/tuning/1/stop", None),
    ("post", f"{V1}/alerts", {"alerts": []}),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_every_mutation_needs_the_token(api: Api, method: str, path: str, body: object) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        r = api.anonymous.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["field"] == "header.Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
    assert api.anonymous.get(f"{V1}/models").status_code == 200  # reading needs none


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/models/embeddings/config", {"knobs": {"instancez": 2}}, 422, "body.knobs.instancez"),
        ("/models/embeddings/config", {"knobs": {"instances": 0}}, 422, "body.knobs.instances"),
        ("/models/embeddings/config", {"knobs": {"priority": "high"}}, 422, "body.knobs.priority"),
        (
            "/models/embeddings/config",
            {"knobs": {"resources": {"compute": 3}}},
            422,
            "body.knobs.resources.compute",
        ),
        ("/models/embeddings/config", {}, 422, "body.knobs"),
        ("/models/nope/config", {"knobs": {}}, 404, "path.model"),
        ("/models/embeddings/config/rollback", {"version": 99999}, 404, "body.version"),
        ("/tuning", {"budget": 1}, 422, "body.budget"),
        ("/tuning", {"models": ["chat-llm", "nope"]}, 422, "body.models.1"),
    ],
)
def test_bad_input_is_json_naming_the_field(
    api: Api, path: str, body: object, status: int, field: str
) -> None:
    r = api.client.post(V1 + path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"]


def test_resources_merge_and_unbounded_ones_are_clipped(api: Api) -> None:
    r = api.client.post(
        f"{V1}/models/embeddings/config", json={"knobs": {"resources": {"gpu": 1}}, "dry_run": True}
    )
    assert r.status_code == 200, r.text
    assert r.json()["proposed"]["resources"] == {"compute": 1}  # compute kept; gpu has no bounds to move in
    assert [(c["knob"], c["rule"]) for c in r.json()["clips"]] == [("resources.gpu", "bounds")]
    r = api.client.post(
        f"{V1}/models/embeddings/config", json={"knobs": {"resources": {"compute": 0}}, "dry_run": True}
    )
    assert r.json()["diff"] == {"resources": [{"compute": 1}, {}]}  # 0 drops it


def test_sla_read_change_and_validate(api: Api) -> None:
    assert api.client.get(f"{V1}/models/safety-guard/sla").json() == {
        "metric": "latency_p99",
        "target_ms": 20.0,
    }
    assert api.client.get(f"{V1}/models/embeddings/sla").json() is None  # bulk: none
    r = api.client.put(f"{V1}/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": -5})
    assert r.status_code == 422 and r.json()["field"] == "body.target_ms"
    r = api.client.put(f"{V1}/models/safety-guard/sla", json={"metric": "p42", "target_ms": 5})
    assert r.status_code == 422 and r.json()["field"] == "body.metric"
    # The spec's rule: time to first token belongs to a streaming model only.
    r = api.client.put(f"{V1}/models/safety-guard/sla", json={"metric": "ttft_p99", "target_ms": 20})
    assert r.status_code == 422 and r.json()["field"] == "body.metric", r.json()
    assert "streaming" in r.json()["error"]
    try:
        r = api.client.put(f"{V1}/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 35})
        assert r.status_code == 200
        assert api.client.get(f"{V1}/models/safety-guard").json()["sla"]["target_ms"] == 35
        assert api.plane.slas()["safety-guard"].target_ms == 35  # what tuning runs will keep
    finally:
        api.client.put(f"{V1}/models/safety-guard/sla", json={"metric": "latency_p99", "target_ms": 20})


def test_fleet_devices_metrics_and_health(api: Api) -> None:
    fleet = api.client.get(f"{V1}/fleet").json()
    assert fleet["models"] == ["chat-llm", "embeddings", "reranker", "safety-guard"]
    assert fleet["servers"][0]["managed"] and fleet["servers"][0]["grpc"].startswith("127.0.0.1:")
    assert api.client.get(f"{V1}/devices").json()[0]["memory_gb"] == 80
    deadline = time.monotonic() + 10
    while not api.client.get(f"{V1}/models/chat-llm/windows?limit=5").json() and time.monotonic() < deadline:
        time.sleep(0.5)
    windows = api.client.get(f"{V1}/models/chat-llm/windows?limit=5").json()
    assert 1 <= len(windows) <= 5 and windows == sorted(windows, key=lambda w: w["end"])
    r = api.client.get(f"{V1}/models/chat-llm/windows?start=100&end=50")
    assert r.status_code == 422 and r.json()["field"] == "query.end"
    summary = {s["model"]: s for s in api.client.get(f"{V1}/summary").json()}
    assert summary["chat-llm"]["sla"]["metric"] == "ttft_p99" and summary["embeddings"]["sla"] is None
    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    metrics = api.client.get("/metrics").text
    for name in ("slatune_reconcile_cycles_total", "slatune_reconfigurations_total", "slatune_scrapes_total",
                 "slatune_http_requests_total", "slatune_alerts_received_total"):  # fmt: skip
        assert name in metrics
    # counted by route template, prefix included (the count lands just after the response is sent)
    assert (
        'slatune_http_requests_total{method="GET",route="/api/v1/models/{model}/windows",status="200"}'
        in metrics
    )
    assert api.client.get("/openapi.json").json()["info"]["title"] == "slatune"


def test_the_webhook_records_alerts_and_falls_back_to_the_last_tuned_configuration(api: Api) -> None:
    alert = {
        "version": "4", "status": "firing", "receiver": "slatune",
        "alerts": [{"status": "firing", "labels": {"alertname": "SlaBroken", "model": "safety-guard"},
                    "annotations": {"summary": "guard p99 over 20 ms"}, "fingerprint": "abc123"}],
    }  # fmt: skip
    r = api.client.post(f"{V1}/alerts", json=alert)
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 1 and r.json()["proposed"] == []
    assert "no tuning run has proved a configuration" in r.json()["decisions"][0]

    # once a tuning run has a winner, the same alert falls back to it (actor "alert")
    current = api.fleet.all_knobs()
    winner = {name: k.model_dump() for name, k in current.items()}
    winner["safety-guard"]["resources"] = {}
    with api.plane.store.session() as session:
        session.add(
            TuningRun(
                study_name="proved",
                optuna_storage="sqlite://",
                status="completed",
                started_at=time.time(),
                budget=2,
                window_s=5,
                models=[],
                best={"knobs": winner},
            )
        )
    r = api.client.post(f"{V1}/alerts", json=alert)
    assert r.status_code == 200, r.text
    (proposed,) = r.json()["proposed"]
    assert proposed["model"] == "safety-guard" and proposed["actor"] == "alert"
    states = api.plane.reconciler.converge([proposed["id"]], 30)
    assert states == {proposed["id"]: "applied"}
    assert api.fleet.observed_knobs("safety-guard").resources == {}
    alerts = api.client.get(f"{V1}/alerts").json()
    assert alerts[0]["alertname"] == "SlaBroken" and alerts[0]["model"] == "safety-guard"
    assert [a["handled"] for a in alerts[:2]] == [True, False]  # acted on; only recorded
    api.client.post(
        f"{V1}/models/safety-guard/config", json={"knobs": {"resources": {"compute": 1}}, "wait": True}
    )
    with api.plane.store.session() as session:
        session.query(TuningRun).filter(TuningRun.study_name == "proved").delete()


def test_a_refused_apply_is_recorded_failed_and_the_previous_configuration_stays(api: Api) -> None:
    """A desired version the runtime refuses (here: more compute tokens than the server has,
    written straight into the store, as a buggy client could) fails with the runtime's message."""
    before = api.fleet.observed_knobs("reranker")
    bad = before.model_dump() | {"resources": {"compute": 7}}
    with api.plane.store.session() as session:
        vid = configs.propose(session, "reranker", bad, "person", "too greedy", time.time()).id
    assert api.plane.reconciler.converge([vid], 30) == {vid: "failed"}
    got = api.client.get(f"{V1}/models/reranker/config/versions/{vid}").json()
    assert got["state"] == "failed" and "asks for 7 but server 'triton0' has 2" in got["error"]
    assert api.fleet.observed_knobs("reranker") == before
    assert config(api, "reranker")["applied"]["knobs"] == before.model_dump()


def test_a_tuning_run_starts_lists_its_trials_and_stops(api: Api) -> None:
    r = api.client.post(
        f"{V1}/tuning", json={"budget": 4, "window_s": 2, "warmup_s": 0, "models": ["reranker"]}
    )
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "running" and run["models"] == ["reranker"] and run["budget"] == 4
    again = api.client.post(f"{V1}/tuning", json={"budget": 2})
    assert again.status_code == 409 and f"tuning run {run['id']} is still running" in again.json()["error"]
    deadline = time.monotonic() + 30
    while not api.client.get(f"{V1}/tuning/{run['id']}").json()["trials"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert api.client.post(f"{V1}/tuning/{run['id']}/stop").status_code == 202
    deadline = time.monotonic() + 60
    while (got := api.client.get(f"{V1}/tuning/{run['id']}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert got["status"] in ("stopped", "completed")
    assert got["trials"][0]["number"] == 0
    assert api.client.post(f"{V1}/tuning/{run['id']}/stop").status_code == 409  # not running any more
    assert api.client.get(f"{V1}/tuning").json()[0]["id"] == run["id"]
    with api.plane.store.session() as session:  # the tuner's changes went through the reconciler
        actors = {v.actor for v in configs.history(session, "reranker")}
    assert "tuner" in actors or got["trials"][0]["state"] != "COMPLETE"


def test_an_unreachable_server_is_retried_with_backoff_until_it_is_back(api: Api) -> None:
    """Runs last in this module: it kills the fleet's tritonserver; the supervisor restarts it."""
    pid = api.fleet.pid("triton0")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    r = api.client.post(
        f"{V1}/models/embeddings/config", json={"knobs": {"max_queue_size": 64}, "wait": True}
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"]["state"] == "applied"
    assert api.fleet.observed_knobs("embeddings").max_queue_size == 64
    assert api.fleet.restarts("triton0") == 1
    metrics = api.client.get("/metrics").text
    assert 'slatune_reconcile_failures_total{kind="temporary",model="embeddings"}' in metrics
