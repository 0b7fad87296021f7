"""The collector against the real tritonserver running the default fleet: stored windows count
what the load generator sent, queue and compute times are positive, and a live reload is a reset,
never a negative or doubled rate. Failures of a scrape are counted and collection goes on."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.collector import Collector, Target
from collectors.fleet import fleet_collector
from collectors.nvml import NvmlCollector
from controlplane.startup import register_fleet
from domain.spec import load_spec
from runtime.fleet import Fleet
from runtime.load import LoadRun, ModelLoad, targets_for
from store import queries
from store.db import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def collecting(default_fleet: Fleet, store: Store) -> Iterator[Collector]:
    endpoints = {s.name: default_fleet.endpoints(s.name) for s in default_fleet.spec.servers}
    register_fleet(store, default_fleet.spec, endpoints)
    collector = fleet_collector(store, default_fleet.spec, endpoints, interval_s=0.5)
    collector.tick()  # the baseline scrape: windows start from here
    with collector.running():
        yield collector


def drive(fleet: Fleet, loads: list[ModelLoad], count: int, during: object = None) -> LoadRun:
    targets = targets_for(fleet.spec, lambda s: fleet.endpoints(s).grpc)
    run = LoadRun(loads, targets, duration_s=60, max_requests=count, seed=4).start()
    if callable(during):
        during()
    run.join()
    time.sleep(1.5)  # three more scrapes: every request is in a window
    return run


def stored(store: Store, model: str) -> list[queries.MetricWindow]:
    with store.session() as session:
        return list(queries.windows(session, model))


def traced(rows: list[queries.MetricWindow], field: str) -> float:
    """How many requests the windows' histograms (cumulative buckets) timed in all."""
    return sum(queries.buckets_from_json(getattr(r, field)).get(math.inf, 0.0) for r in rows)


def test_stored_windows_count_what_was_sent(
    default_fleet: Fleet, store: Store, collecting: Collector
) -> None:
    run = drive(
        default_fleet,
        [
            ModelLoad("safety-guard", rate=40.0, words=(8, 32)),
            ModelLoad("embeddings", concurrency=1, batch=4),
        ],
        count=120,
    )
    report = run.report()
    assert report.failed == 0
    for model in ("safety-guard", "embeddings"):
        rows = stored(store, model)
        sent = report.models[model].sent
        assert sum(r.requests for r in rows) == sent, model
        busy = [r for r in rows if r.requests > 0]
        assert all(r.avg_queue_ms is not None and r.avg_queue_ms > 0 for r in busy)
        assert all(r.avg_compute_infer_ms is not None and r.avg_compute_infer_ms > 0 for r in busy)
        assert all(r.config_version_id is not None for r in rows)  # the startup version
        # latency quantiles come from the server's trace (every request, queue included); a request
        # whose trace file lands a pass after the page counted it is timed in the next window
        timed = [r for r in rows if r.latency_source is not None]
        assert timed and all(r.latency_source == "server" and r.p99_ms and r.p99_ms > 0 for r in timed)
        assert traced(timed, "latency_buckets") == sent, model  # each request timed once
    emb = stored(store, "embeddings")
    assert sum(r.inference_rate * (r.end - r.start) for r in emb) == pytest.approx(
        4 * report.models["embeddings"].sent
    )
    assert all(r.avg_batch is None or r.avg_batch >= 4 for r in emb)  # client batches of 4, maybe merged
    with store.session() as session:
        devices = session.query(queries.DeviceWindowRow).filter_by(device="cpu").all()
    assert devices and all(d.utilization is not None and 0 <= d.utilization <= 1 for d in devices)
    assert collecting.metrics.windows_written._value.get() >= len(emb)


def test_chat_ttft_windows_come_from_the_trace(
    default_fleet: Fleet, store: Store, collecting: Collector
) -> None:
    """Every streamed request's first token is timed server side from its arrival (the trace),
    once: the windows' first-token counts add up to what the client sent."""
    run = drive(default_fleet, [ModelLoad("chat-llm", rate=8.0, words=(8, 32), max_tokens=4)], count=16)
    sent = run.report().models["chat-llm"].sent
    deadline = time.monotonic() + 10  # a streamed request's trace is written once its stream is done
    while traced(stored(store, "chat-llm"), "ttft_buckets") < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = stored(store, "chat-llm")
    assert sum(r.requests for r in rows) == sent
    timed = [r for r in rows if r.ttft_source is not None]
    assert timed and all(r.ttft_source == "server" and r.ttft_p99_ms and r.ttft_p99_ms > 0 for r in timed)
    assert traced(timed, "ttft_buckets") == sent  # each request's first token, once


def test_a_live_reload_keeps_counting_without_negative_or_doubled_rates(
    default_fleet: Fleet, store: Store, collecting: Collector
) -> None:
    """Triton 2.51 keeps a model's counters through a config reload (measured: they do not restart
    from zero); the new instance's one warmup request is counted as a success."""
    before = default_fleet.knobs("safety-guard")

    def reload_twice() -> None:
        time.sleep(2)
        default_fleet.apply("safety-guard", max_queue_delay_us=300)
        time.sleep(2)
        default_fleet.apply("safety-guard", before)

    run = drive(
        default_fleet, [ModelLoad("safety-guard", rate=30.0, words=(8, 32))], count=240, during=reload_twice
    )
    rows = stored(store, "safety-guard")
    assert all(r.request_rate >= 0 and r.success >= 0 and r.inference_rate >= 0 for r in rows)
    sent = run.report().models["safety-guard"].sent
    warmups = 2 * before.instances  # one warmup request per new instance, two reloads
    assert sent <= sum(r.requests for r in rows) <= sent + warmups
    assert max(r.request_rate for r in rows) < 2 * 30.0


def test_a_server_restart_is_a_reset_not_a_negative_rate(tmp_path: Path) -> None:
    """Killed mid-traffic, the server is restarted by the supervisor and its counters start from
    zero: the window across it is a reset, and no rate goes negative."""
    from tests.integration.test_lifecycle import small_spec, wait_for

    spec = load_spec(small_spec(tmp_path))
    store = Store(f"sqlite:///{tmp_path / 'restart.db'}")
    store.upgrade()
    with Fleet(spec, tmp_path / "work") as fleet:
        endpoints = {s.name: fleet.endpoints(s.name) for s in spec.servers}
        register_fleet(store, spec, endpoints)
        collector = fleet_collector(store, spec, endpoints, interval_s=0.5)
        collector.tick()
        proc = fleet._servers["triton0"].process
        assert proc is not None and proc.proc is not None

        def kill() -> None:
            time.sleep(2)
            os.killpg(proc.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            assert wait_for(lambda: fleet.restarts("triton0") == 1 and proc.ready(), 60)

        with collector.running():
            run = drive(fleet, [ModelLoad("safety-guard", rate=30.0, words=(8, 32))], count=300, during=kill)
    rows = stored(store, "safety-guard")
    store.dispose()
    assert any(r.reset for r in rows)
    assert all(r.request_rate >= 0 and r.success >= 0 for r in rows)
    report = run.report().models["safety-guard"]
    # Requests served between the last scrape and the kill died with the old counters.
    assert sum(r.success for r in rows) <= report.ok + 1  # + the restarted instance's warmup


def test_unreachable_and_malformed_servers_are_counted_and_collection_goes_on(
    store: Store, default_fleet: Fleet
) -> None:
    import http.server

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"nv_inference_count{model= 3\n")

        def log_message(self, *args: object) -> None:
            pass

    garbage = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    clock = [1000.0]
    good = Target("triton0", default_fleet.endpoints("triton0").metrics_url)
    targets = [good, Target("gone", "http://127.0.0.1:9/metrics"),
               Target("garbage", f"http://127.0.0.1:{garbage.server_port}/metrics")]  # fmt: skip
    collector = Collector(store, targets, interval_s=1.0, clock=lambda: clock[0])
    try:
        for _ in range(3):
            result = collector.tick()
            clock[0] += 1.0
        assert result.failed["garbage"].startswith("malformed")
        assert collector.stale() == ["gone"]
        m = collector.metrics
        assert m.scrape_failures.labels("garbage", "malformed")._value.get() == 3
        # backoff: tried at 1000, then not before 1000 + 2, so 2 of 3 ticks
        assert m.scrape_failures.labels("gone", "unreachable")._value.get() == 2
        assert m.scrapes.labels("triton0")._value.get() == 3
        assert m.stale_servers._value.get() == 1
        assert result.windows  # the good server is still collected
    finally:
        collector.close()
        garbage.shutdown()


def test_nvml_without_a_gpu_stays_off_quietly() -> None:
    nvml = NvmlCollector()
    if nvml.enabled:  # a GPU host: the real path
        windows = nvml.windows(0.0, 1.0)
        assert windows and all(w.source == "nvml" and w.memory_total_bytes for w in windows)
        nvml.close()
    else:
        assert nvml.reason and nvml.windows(0.0, 1.0) == []
