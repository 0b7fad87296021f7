"""The REST API against the real fleet: propose, dry-run, apply, read back from Triton, roll back;
the bearer token; errors naming the bad field; SLAs; the alert webhook; a failed apply."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from controlplane.app import MAX_BODY_BYTES, create_app
from controlplane.plane import ControlPlane
from controlplane.telemetry import ControlPlaneMetrics
from store import configs
from store.models import TuningRun
from tests.integration.conftest import TOKEN, Api

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
    ("post", f"{V1}/colocation-rules", {"model_a": "a", "model_b": "b", "summary": "x"}),
    ("delete", f"{V1}/colocation-rules/1", None),
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
        # the built-in embedder runs max batch 64: a preferred size above it
        (
            "/models/embeddings/config",
            {"knobs": {"preferred_batch_sizes": [8, 128]}},
            422,
            "body.knobs.preferred_batch_sizes",
        ),
        (
            "/models/embeddings/config",
            {"knobs": {"compute_priority": "lowest"}},
            422,
            "body.knobs.compute_priority",
        ),
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
        "window_s": 60.0,  # the spec gives none: the defaults
        "objective": 0.99,
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
    device = api.client.get(f"{V1}/devices").json()[0]
    assert device["memory_gb"] == 80 and device["servers"] == ["triton0"]
    assert device["models"] == ["chat-llm", "embeddings", "reranker", "safety-guard"]  # the placement
    deadline = time.monotonic() + 10
    while not api.client.get(f"{V1}/models/chat-llm/windows?limit=5").json() and time.monotonic() < deadline:
        time.sleep(0.5)
    windows = api.client.get(f"{V1}/models/chat-llm/windows?limit=5").json()
    assert 1 <= len(windows) <= 5 and windows == sorted(windows, key=lambda w: w["end"])
    busy = api.client.get(f"{V1}/devices").json()[0]["utilization"]  # the server's device windows
    assert busy is not None and 0.0 <= busy <= 1.0, busy
    r = api.client.get(f"{V1}/models/chat-llm/windows?start=100&end=50")
    assert r.status_code == 422 and r.json()["field"] == "query.end"
    summary = {s["model"]: s for s in api.client.get(f"{V1}/summary").json()}
    assert summary["chat-llm"]["sla"]["metric"] == "ttft_p99" and summary["embeddings"]["sla"] is None
    assert summary["chat-llm"]["slo"]["window_s"] == 60.0 and summary["embeddings"]["slo"] is None
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
    assert config(api, "reranker")["applied"]["knobs"] == before.model_dump(mode="json")


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


# ---------------------------------------------------------------- inputs checked before they cost anything
def send_raw(
    api: Api, method: str, path: str, headers: dict[str, str], chunks: Iterator[bytes]
) -> tuple[int, dict[str, str], dict[str, Any], int]:
    """One request straight into the app over ASGI, its body streamed from `chunks` as the server
    would hand it over (more_body until they run out): (status, headers, JSON body, bytes pulled)."""
    pulled = 0
    started: dict[str, Any] = {}
    body = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        pulled += len(chunk or b"")
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": method, "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }  # fmt: skip
    asyncio.run(api.client.app(scope, receive, send))
    out_headers = {k.decode(): v.decode() for k, v in started["headers"]}
    return started["status"], out_headers, json.loads(body), pulled


def endless(chunk: int = 64 * 1024) -> Iterator[bytes]:
    while True:
        yield b"x" * chunk


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("length", [str(200 * 2**20), None], ids=["content-length", "chunked"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_an_anonymous_body_is_never_read(api: Api, length: str | None, authorization: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    headers |= {"Content-Length": length} if length else {}
    headers |= {"Authorization": authorization} if authorization else {}
    for path in (f"{V1}/alerts", f"{V1}/models/embeddings/config", f"{V1}/tuning"):
        status, out, body, pulled = send_raw(api, "POST", path, headers, endless())
        assert (status, body["field"], out["www-authenticate"]) == (401, "header.Authorization", "Bearer")
        assert pulled == 0, path  # not a byte of the 200 MB (or endless) body
    # a path or method no route takes keeps its 404 or 405, still unread
    for method, path, expected in (("POST", f"{V1}/nowhere", 404), ("DELETE", f"{V1}/alerts", 405)):
        status, _, _, pulled = send_raw(api, method, path, headers, endless())
        assert (status, pulled) == (expected, 0)


def test_a_body_over_the_limit_is_413_json(api: Api) -> None:
    # declared: refused before the app runs, nothing read
    headers = AUTH | {"Content-Type": "application/json", "Content-Length": str(2 * 2**20)}
    status, out, body, pulled = send_raw(api, "POST", f"{V1}/alerts", headers, endless())
    assert (status, body["field"], pulled) == (413, "body", 0)
    assert body["error"] == "the request body is over the limit of 1048576 bytes (1 MiB)"
    assert out["connection"] == "close"
    # chunked, without Content-Length: stopped at the chunk that passes the limit
    headers = AUTH | {"Content-Type": "application/json"}
    status, _, body, pulled = send_raw(api, "POST", f"{V1}/alerts", headers, endless())
    assert (status, body["field"]) == (413, "body")
    assert MAX_BODY_BYTES < pulled <= MAX_BODY_BYTES + 64 * 1024
    # and through the client, a real 2 MB JSON body
    r = api.client.post(f"{V1}/alerts", content=b'{"alerts": [' + b" " * (2 * 2**20) + b"]}",
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and r.json()["field"] == "body" and "1048576 bytes" in r.json()["error"]
    assert api.client.get(f"{V1}/models").status_code == 200  # and the API goes on


def test_a_webhook_with_100_alerts_still_fits(api: Api) -> None:
    alert = {  # as Alertmanager sends one
        "status": "resolved",
        "labels": {"alertname": "SlatuneReconcileFailing", "model": "embeddings", "severity": "ticket",
                   "instance": "slatune-control-plane.prod.example.com:8780", "job": "slatune"},
        "annotations": {"summary": "a configuration of embeddings was refused; see its history in the API"},
        "startsAt": "2026-11-24T10:11:12.123456789Z", "endsAt": "2026-11-24T10:21:12.123456789Z",
        "generatorURL": "http://prometheus.prod.example.com:9090/graph?g0.expr=increase%28slatune_reconcile"
                        "_failures_total%7Bkind%3D%22permanent%22%7D%5B10m%5D%29+%3E+0&g0.tab=1",
    }  # fmt: skip
    alerts = [alert | {"fingerprint": f"{i:016x}"} for i in range(100)]
    payload = {
        "version": "4",
        "status": "resolved",
        "receiver": "slatune",
        "groupLabels": {},
        "alerts": alerts,
    }
    assert len(json.dumps(payload)) > 50_000  # 1,000 (the most AmWebhook takes) are ten times this
    r = api.client.post(f"{V1}/alerts", json=payload)
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 100


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_float_must_be_finite(api: Api, value: bytes) -> None:
    """Python's JSON reader takes NaN and Infinity; no bound refuses NaN (every comparison is false)."""
    r = api.client.put(
        f"{V1}/models/safety-guard/sla",
        content=b'{"metric": "latency_p99", "target_ms": ' + value + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "body.target_ms" and "finite number" in r.json()["error"]
    r = api.client.post(f"{V1}/tuning", content=b'{"window_s": ' + value + b"}",
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "body.window_s", r.text
    assert api.plane.slas()["safety-guard"].target_ms == 20


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/models/chat-llm/windows?start=nan", "query.start"),
        ("/models/chat-llm/windows?end=inf", "query.end"),
        ("/models/chat-llm/windows?start=-Infinity", "query.start"),
        ("/summary?window_s=nan", "query.window_s"),
    ],
)
def test_a_query_float_must_be_finite(api: Api, query: str, field: str) -> None:
    r = api.client.get(V1 + query)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and "finite number" in r.json()["error"]


def test_the_longest_path_the_app_sees_gets_json() -> None:
    """uvicorn (httptools) answers a request target over 65,535 bytes itself, with a plain-text 400,
    before the app is called; up to that, every answer is the app's, in JSON."""
    httptools = pytest.importorskip("httptools")
    longest = 65_535
    httptools.parse_url(b"/" + b"a" * (longest - 1))
    with pytest.raises(httptools.HttpParserInvalidURLError):
        httptools.parse_url(b"/" + b"a" * longest)
    plane = cast(ControlPlane, type("Plane", (), {"metrics": ControlPlaneMetrics()})())
    app = create_app(plane, TOKEN)
    with TestClient(app) as client:
        r = client.get("/" + "a" * (longest - 1))
        assert r.status_code == 404 and r.json()["error"] == "Not Found"
        name = "m" * (longest - len(f"{V1}/models//config"))
        r = client.post(f"{V1}/models/{name}/config", json={"knobs": {}})
        assert r.status_code == 401 and r.json()["field"] == "header.Authorization"


def test_an_unexpected_error_is_json_too() -> None:
    plane = cast(ControlPlane, type("Plane", (), {"metrics": ControlPlaneMetrics()})())
    app = create_app(plane, TOKEN)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.json()["error"].startswith("internal server error")
    assert "a bug" not in r.text


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


def test_colocation_rules_are_added_listed_and_forgotten(api: Api) -> None:
    body = {
        "model_a": "safety-guard",
        "model_b": "embeddings",
        "summary": "guard p99 31 ms against 20 beside it",
    }
    added = api.client.post(f"{V1}/colocation-rules", json=body)
    assert added.status_code == 201, added.text
    rule = added.json()
    # one pair is one row, in name order, whoever was named first
    assert (rule["model_a"], rule["model_b"], rule["source"]) == ("embeddings", "safety-guard", "person")
    again = api.client.post(
        f"{V1}/colocation-rules", json={**body, "model_a": "embeddings", "model_b": "safety-guard"}
    )
    assert again.json()["id"] == rule["id"]
    listed = api.client.get(f"{V1}/colocation-rules").json()
    assert [r["id"] for r in listed] == [rule["id"]] and listed[0]["summary"] == body["summary"]
    same = api.client.post(f"{V1}/colocation-rules", json={**body, "model_b": "safety-guard"})
    assert same.status_code == 422 and same.json()["field"] == "model_b"
    bad = api.client.post(f"{V1}/colocation-rules", json={**body, "model_a": "no spaces"})
    assert bad.status_code == 422 and bad.json()["field"] == "body.model_a"
    assert api.client.delete(f"{V1}/colocation-rules/{rule['id']}").status_code == 204
    assert api.client.get(f"{V1}/colocation-rules").json() == []
    gone = api.client.delete(f"{V1}/colocation-rules/{rule['id']}")
    assert gone.status_code == 404 and gone.json()["field"] == "rule_id"


def test_the_diagnosis_names_batches_of_one_under_load(api: Api) -> None:
    # The embedder at 25 requests/s of one item each, with no queue delay (the default fleet's
    # knobs): every request runs as a batch of its own, which is what the rule is for.
    from runtime.load import LoadRun, ModelLoad, targets_for

    assert api.fleet.knobs("embeddings").max_queue_delay_us == 0
    targets = targets_for(api.fleet.spec, lambda s: api.fleet.endpoints(s).grpc)
    began = time.time()
    report = LoadRun(
        [ModelLoad("embeddings", rate=25.0, words=(4, 8))], targets, duration_s=6.0, seed=9
    ).run()
    assert report.failed == 0, report.errors
    time.sleep(1.5)  # the last windows reach the store
    seconds = time.time() - began
    found = api.client.get(f"{V1}/diagnosis", params={"seconds": seconds}).json()
    batching = [f for f in found if f["kind"] == "batching-window" and f["subject"] == "embeddings"]
    assert batching, found
    assert batching[0]["evidence"]["avg_batch"] < 1.3 and batching[0]["evidence"]["request_rate"] >= 5
    assert "max_queue_delay_us" in batching[0]["action"]
    assert batching[0]["window"][1] - batching[0]["window"][0] == pytest.approx(seconds)
    bad = api.client.get(f"{V1}/diagnosis", params={"seconds": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "query.seconds"
