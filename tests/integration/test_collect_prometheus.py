"""Prometheus as a source against direct scraping: a real Prometheus (tests/promstack.py) scrapes
the real default fleet every second, as `slatune prometheus config` configures it, while a bounded
load (count and time) drives every model. Two collectors tick side by side, each into its own
store: one scraping the servers' pages, one reading Prometheus' API.

What must agree, and within what:
- requests, successes, failures by reason, and the summed latency histograms (so p99 over the run):
  exactly. Both read the same integer counters; each source's first reading comes before the first
  request and its last after the last response, so the windows of each add up to the counters'
  whole increase over the run, whatever the edges in between.
- mean queue and compute times over the run (the sums of microseconds over the successes): within
  1e-9 relative, float rounding of the same sums.
- mean request rate over the run: each source's rate is its requests over the span of its windows
  that saw requests. That span covers the load and overhangs it by at most one reading interval at
  each end (readings are 1 s apart in both), so each rate lies in [N / (S + 2 s), N / S] for a load
  of span S: the two agree within a factor (S + 2) / S, about 1.2 here. A source that counted a
  window twice, or lost one, is outside it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.collector import Collector, Target
from collectors.fleet import fleet_collector
from controlplane.startup import register_fleet
from dashboards.prometheus import prometheus_config
from domain.windows import histogram_quantile, summed_buckets
from runtime.fleet import Fleet
from runtime.load import LoadRun, ModelLoad, targets_for
from store import queries
from store.db import Store
from tests.promstack import query, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LOAD_S = 12.0
INTERVAL_S = 1.0


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    direct, prom = Store(f"sqlite:///{tmp_path / 'direct.db'}"), Store(f"sqlite:///{tmp_path / 'prom.db'}")
    for s in (direct, prom):
        s.upgrade()
    yield direct, prom
    direct.dispose()
    prom.dispose()


def totals(store: Store, model: str) -> dict[str, float | None]:
    with store.session() as session:
        rows = [queries.as_window(model, r) for r in queries.windows(session, model)]
    busy = [w for w in rows if w.requests > 0]
    span = busy[-1].end - busy[0].start if busy else 0.0
    hist = summed_buckets(w.latency_buckets for w in rows)
    failures: dict[str, float] = {}
    for w in rows:
        for reason, n in w.failures.items():
            failures[reason] = failures.get(reason, 0.0) + n
    return {
        "windows": len(rows),
        "requests": sum(w.requests for w in rows),
        "success": sum(w.success for w in rows),
        "failed": sum(failures.values()),
        "queue_us": sum((w.avg_queue_ms or 0.0) * w.success * 1000 for w in rows),
        "compute_us": sum((w.avg_compute_infer_ms or 0.0) * w.success * 1000 for w in rows),
        "timed": hist.count,
        "p99_ms": histogram_quantile(0.99, hist),
        "rate": sum(w.requests for w in busy) / span if span else None,
        "span": span,
        "zero_length": sum(1 for w in rows if w.end <= w.start),
    }


def test_windows_read_through_prometheus_agree_with_direct_scraping(
    default_fleet: Fleet, tmp_path: Path, stores: tuple[Store, Store]
) -> None:
    spec = default_fleet.spec
    endpoints = {s.name: default_fleet.endpoints(s.name) for s in spec.servers}
    urls = {s: e.metrics_url for s, e in endpoints.items()}
    config = prometheus_config(urls, "http://127.0.0.1:9/metrics", scrape_interval="1s", rule_files=())
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] == "triton"]
    direct_store, prom_store = stores
    for s in stores:
        register_fleet(s, spec, endpoints)
    # The direct collector without the trace files: both take latency from the models' histograms.
    targets = [
        Target(s.name, urls[s.name], frozenset(m.name for m in spec.models if m.server == s.name))
        for s in spec.servers
    ]
    direct = Collector(direct_store, targets, interval_s=INTERVAL_S, retention_raw_s=None)
    with run_prometheus(tmp_path, config) as prom:
        deadline = time.monotonic() + 30
        while len([r for r in query(prom.url, 'up{job="triton"} == 1')]) < len(spec.servers):
            assert time.monotonic() < deadline, "Prometheus never scraped every server"
            time.sleep(0.5)
        via = fleet_collector(
            prom_store, spec, endpoints, interval_s=INTERVAL_S, nvml=False, retention_raw_s=None,
            prometheus_url=prom.url, prometheus_lookback_s=5.0,
        )  # fmt: skip
        began = time.monotonic()
        try:
            for c in (direct, via):  # the baselines, before the first request
                assert c.tick().failed == {}
            loads = [
                ModelLoad("safety-guard", rate=10, words=(8, 16)),
                ModelLoad("chat-llm", rate=1, words=(8, 16), max_tokens=4),
                ModelLoad("embeddings", rate=3, batch=4, words=(8, 16)),
                ModelLoad("reranker", rate=2, batch=2, words=(8, 16)),
            ]
            run = LoadRun(
                loads, targets_for(spec, lambda s: default_fleet.endpoints(s).grpc),
                duration_s=LOAD_S, max_requests=400, seed=11,
            ).start()  # fmt: skip
            while run.running or time.monotonic() - began < 2:
                tick = time.monotonic()
                for c in (direct, via):
                    assert c.tick().failed == {}
                time.sleep(max(INTERVAL_S - (time.monotonic() - tick), 0.0))
            report = run.join()
            done = time.time()
            # the last readings: a page read now, and a Prometheus scrape that began after the last response
            time.sleep(0.2)
            direct.tick()
            deadline, last_end = time.monotonic() + 10, 0.0
            while last_end <= done + 0.1:
                assert time.monotonic() < deadline, "Prometheus never scraped after the load"
                time.sleep(0.3)
                result = via.tick()
                assert result.failed == {}
                last_end = max([w.end for w in result.windows], default=last_end)
        finally:
            via.close()
            direct.close()
    sent = 0
    for model in spec.model_names:
        d, p = totals(direct_store, model), totals(prom_store, model)
        print(f"\n{model}: direct {d}\n{' ' * len(model)}  prometheus {p}")
        assert d["requests"] and d["requests"] > 0, f"{model}: the load never reached it"
        sent += int(d["requests"] or 0)
        for key in ("requests", "success", "failed", "timed", "p99_ms"):
            assert p[key] == d[key], f"{model}: {key} through Prometheus {p[key]} != direct {d[key]}"
        for key in ("queue_us", "compute_us"):
            assert p[key] == pytest.approx(d[key], rel=1e-9), key
        # each span is the model's true one (S) plus up to a reading interval at each end
        low = max(min(d["span"] or 0.0, p["span"] or 0.0) - 2 * INTERVAL_S, 1.0)
        bound = (low + 2 * INTERVAL_S) / low
        assert d["rate"] and p["rate"]
        assert 1 / bound <= p["rate"] / d["rate"] <= bound, f"{model}: rates {p['rate']} vs {d['rate']}"
        assert p["zero_length"] == 0 and (p["windows"] or 0) >= LOAD_S - 2
    assert 0 < sent <= 400 and report.sent <= 400 and report.duration_s <= LOAD_S + 5
