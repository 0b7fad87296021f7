"""The pure parts of measuring what clients see: trace files to per-request latency, the window's
choice of source, idle windows, quantiles past the last bucket, mixed bucket sets, queue age."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.parse import ModelSample, parse
from collectors.trace import LATENCY_BUCKETS_MS, TraceReader, observe, trace_latencies
from collectors.window import model_window
from domain.windows import (
    Histogram,
    ModelWindow,
    aggregate,
    beyond_buckets,
    histogram_quantile,
    stalled_queue_s,
    summed_buckets,
)
from store.queries import buckets_from_json, buckets_to_json


def trace(tid: int, model: str, stamps: dict[str, int]) -> list[dict[str, Any]]:
    """A trace as Triton 2.51 writes it: a record naming the model, one record per stamp."""
    out: list[dict[str, Any]] = [{"id": tid, "model_name": model, "model_version": 1}]
    out += [{"id": tid, "timestamps": [{"name": n, "ns": ns}]} for n, ns in stamps.items()]
    return out


MS = 1_000_000
HTTP = {
    "HTTP_RECV_START": 0,
    "HTTP_RECV_END": 1 * MS // 10,
    "REQUEST_START": 2 * MS // 10,
    "QUEUE_START": 3 * MS // 10,
    "COMPUTE_START": 40 * MS,  # 39.7 ms in the queue
    "COMPUTE_END": 44 * MS,
    "REQUEST_END": 45 * MS,
    "HTTP_SEND_START": 45 * MS,
    "HTTP_SEND_END": 46 * MS,
}


def test_a_trace_measures_from_arrival_to_the_last_send_queue_included() -> None:
    (req,) = trace_latencies(trace(1, "guard", HTTP))
    assert req.model == "guard"
    assert req.latency_ms == pytest.approx(46.0)
    assert req.queue_ms == pytest.approx(39.7)


def test_grpc_arrival_is_the_end_of_the_read_not_the_start_of_the_wait() -> None:
    # GRPC_WAITREAD_START is when the handler began waiting for a request, long before it came.
    stamps = {
        "GRPC_WAITREAD_START": 0,
        "GRPC_WAITREAD_END": 500 * MS,
        "REQUEST_START": 501 * MS,
        "REQUEST_END": 505 * MS,
        "GRPC_SEND_START": 505 * MS,
        "GRPC_SEND_END": 506 * MS,
    }
    (req,) = trace_latencies(trace(7, "guard", stamps))
    assert req.latency_ms == pytest.approx(6.0)


def test_a_streamed_request_ends_with_its_last_response() -> None:
    records = trace(3, "chat", {"GRPC_WAITREAD_END": 0, "REQUEST_START": MS})
    for i in range(1, 5):  # four tokens, each sent
        records.append({"id": 3, "timestamps": [{"name": "GRPC_SEND_END", "ns": i * 10 * MS}]})
    (req,) = trace_latencies(records)
    assert req.latency_ms == pytest.approx(40.0)
    assert req.first_response_ms == pytest.approx(10.0)  # its time to first token, queue included


def test_the_reader_times_first_tokens_of_streaming_models_only(tmp_path: Path) -> None:
    records = trace(3, "chat", {"GRPC_WAITREAD_END": 0, "REQUEST_START": MS})
    records += [{"id": 3, "timestamps": [{"name": "GRPC_SEND_END", "ns": i * 10 * MS}]} for i in (1, 2)]
    (tmp_path / "trace.json.0").write_text(json.dumps(records))
    (tmp_path / "trace.json.1").write_text(json.dumps(trace(1, "guard", HTTP)))
    reader = TraceReader(tmp_path, streaming=frozenset({"chat"}))
    reader.read()
    assert reader.first_responses["chat"].count == 1 and reader.first_responses["chat"].buckets[10.0] == 1
    assert "guard" not in reader.first_responses  # not streaming: its first response is its last


def test_traces_without_model_arrival_or_end_and_child_traces_give_nothing() -> None:
    assert trace_latencies([{"id": 1, "timestamps": [{"name": "HTTP_RECV_START", "ns": 0}]}]) == []
    assert trace_latencies(trace(2, "m", {"REQUEST_START": 5})) == []
    child = [*trace(4, "m", HTTP), {"id": 4, "parent_id": 1}]
    assert trace_latencies(child) == []


def test_observe_fills_cumulative_buckets_up_to_60_s_and_inf() -> None:
    h = Histogram()
    for v in (0.5, 3.0, 45_000.0, 90_000.0):
        observe(h, v)
    assert max(b for b in LATENCY_BUCKETS_MS if not math.isinf(b)) >= 60_000
    assert h.count == 4 and h.buckets[math.inf] == 4
    assert h.buckets[1.0] == 1 and h.buckets[5.0] == 2 and h.buckets[60_000.0] == 3


def test_the_reader_takes_each_file_once_and_leaves_a_partial_one(tmp_path: Path) -> None:
    (tmp_path / "trace.json.0").write_text(json.dumps(trace(1, "guard", HTTP)))
    (tmp_path / "trace.json.1").write_text(json.dumps(trace(2, "bulk", HTTP)))
    (tmp_path / "trace.json.2").write_text('[{"id":3,')  # still being written
    reader = TraceReader(tmp_path)
    hs = reader.read()
    assert hs["guard"].count == 1 and hs["bulk"].count == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json.2"]
    (tmp_path / "trace.json.3").write_text(json.dumps(trace(4, "guard", HTTP)))
    assert reader.read()["guard"].count == 2  # cumulative
    old = time.time() - 60
    os.utime(tmp_path / "trace.json.2", (old, old))
    reader.read()
    assert not list(tmp_path.iterdir()) and reader.dropped_files == 1
    assert TraceReader(tmp_path / "missing").read() == {}


def sample(success: float, server: Histogram | None = None, quantile_us: float | None = None) -> ModelSample:
    s = ModelSample(success=success)
    if server is not None:
        s.latency["server"] = server
    if quantile_us is not None:
        s.quantiles["request"] = {0.99: quantile_us}
    return s


def hist(values: list[float]) -> Histogram:
    h = Histogram(dict.fromkeys(LATENCY_BUCKETS_MS, 0.0))
    for v in values:
        observe(h, v)
    return h


def test_the_server_trace_is_preferred_and_counts_unstamped_requests() -> None:
    page = """# TYPE nv_inference_request_success counter
nv_inference_request_success{model="g",version="1"} 10
# TYPE slatune_request_ms histogram
slatune_request_ms_bucket{model="g",origin="model",le="5"} 10
slatune_request_ms_bucket{model="g",origin="model",le="+Inf"} 10
slatune_request_ms_count{model="g",origin="model"} 10
slatune_request_ms_sum{model="g",origin="model"} 20
"""
    before, after = parse(page).models["g"], parse(page.replace(" 10\n", " 20\n")).models["g"]
    # The model saw 10 requests under 5 ms from pick-up; the trace saw them wait in the queue.
    after.latency["server"] = hist([40.0] * 10)
    w = model_window("g", before, after, 0.0, 1.0)
    assert w.latency_source == "server"  # first traced window: the reader's histogram began at zero
    assert w.p99_ms is not None and 30 < w.p99_ms <= 50


def test_stamped_and_unstamped_requests_are_both_counted_without_a_trace() -> None:
    before, after = ModelSample(), ModelSample(success=4)
    before.latency = {"client": hist([]), "model": hist([])}
    after.latency = {"client": hist([100.0, 100.0]), "model": hist([1.0, 1.0])}
    w = model_window("g", before, after, 0.0, 1.0)
    assert w.latency_source == "client+model"
    assert sum(1 for _ in w.latency_buckets) and w.latency_buckets[math.inf] == 4


def test_an_idle_window_reports_no_quantiles_not_the_summarys_memory() -> None:
    # Triton's summary still says 900 ms (it remembers about a minute): no request in the window.
    a = sample(10, quantile_us=900_000)
    b = sample(10, quantile_us=900_000)
    w = model_window("m", a, b, 0.0, 1.0)
    assert w.requests == 0
    assert (w.p50_ms, w.p90_ms, w.p99_ms, w.latency_source) == (None, None, None, None)
    # Traced and idle: the same.
    t = hist([3.0])
    w = model_window("m", sample(10, t), sample(10, t), 0.0, 1.0)
    assert (w.p99_ms, w.latency_source) == (None, None)
    # With requests of its own and nothing better, a window still takes the summary.
    w = model_window("m", a, sample(12, quantile_us=900_000), 0.0, 1.0)
    assert w.latency_source == "summary" and w.p99_ms == pytest.approx(900.0)


def test_a_quantile_past_the_last_bound_is_that_bound_and_flagged() -> None:
    h = hist([70_000.0] * 5 + [2.0] * 95)
    assert histogram_quantile(0.99, h) == 60_000.0  # a floor: the truth is past it
    assert beyond_buckets(0.99, h.buckets) and not beyond_buckets(0.5, h.buckets)
    w = ModelWindow("m", 0, 1, 100, 100, latency_buckets=h.buckets, p99_ms=60_000.0)
    assert w.p99_beyond_buckets
    stored = buckets_from_json(json.loads(json.dumps(buckets_to_json(h.buckets))))
    assert stored == h.buckets  # the store keeps every bound, 60 s and +Inf included
    assert aggregate([w]).p99_beyond_buckets
    assert not beyond_buckets(0.99, hist([2.0]).buckets) and not beyond_buckets(0.99, {})


def test_windows_with_different_bounds_sum_without_inventing_fast_requests() -> None:
    old = {5.0: 1.0, 5000.0: 10.0, math.inf: 10.0}  # kept before the buckets reached 60 s
    new = {5.0: 0.0, 5000.0: 0.0, 10_000.0: 0.0, 60_000.0: 10.0, math.inf: 10.0}
    total = summed_buckets([old, new])
    # the old window's 10 requests, all at most 5 s, are at most 10 s and 60 s too
    assert total.buckets[10_000.0] == 10 and total.buckets[60_000.0] == 20 and total.count == 20
    counts = [total.buckets[le] for le in sorted(total.buckets)]
    assert counts == sorted(counts)  # cumulative: never down


def w(start: float, requests: float, pending: float) -> ModelWindow:
    return ModelWindow("m", start, start + 1.0, requests, requests, pending=pending)


def test_queue_wait_by_littles_law_and_a_stalled_queues_age() -> None:
    assert w(0, 10, 5).queue_wait_ms == pytest.approx(500.0)  # 5 waiting, 10 a second
    assert w(0, 10, 0).queue_wait_ms is None
    assert w(0, 0, 3).queue_wait_ms == math.inf
    # Requests pending since t=1, none completed or failed from then on: waited at least 3 s.
    history = [w(0, 5, 0), w(1, 5, 2), w(2, 0, 2), w(3, 0, 3), w(4, 0, 3)]
    assert stalled_queue_s(history) == pytest.approx(3.0)
    assert stalled_queue_s([*history, w(5, 1, 3)]) == 0.0  # a completion: no certainty left
    assert stalled_queue_s([w(0, 5, 0), w(1, 0, 2)]) == 0.0  # they may have come at its end


def test_the_summary_of_windows_carries_the_queue_as_it_is_now() -> None:
    history = [w(0, 5, 0), w(1, 5, 2), w(2, 0, 2), w(3, 0, 3), w(4, 0, 3)]
    agg = aggregate(history)
    assert (agg.pending, agg.queue_wait_ms, agg.oldest_waiting_s) == (3, math.inf, pytest.approx(3.0))
    moving = aggregate([w(0, 10, 0), w(1, 10, 5)])
    assert (moving.pending, moving.queue_wait_ms, moving.oldest_waiting_s) == (5, pytest.approx(500.0), 0.0)


def test_a_traced_model_is_timed_by_its_trace_alone() -> None:
    from collectors.parse import ModelSample
    from collectors.window import model_window

    prev, cur = ModelSample(), ModelSample()
    prev.latency = {
        "server": Histogram({5.0: 3.0, math.inf: 3.0}, 3.0),
        "model": Histogram({5.0: 3.0, math.inf: 3.0}, 3.0),
    }
    # The page counted a request whose trace file comes next pass: the model's own histogram has it.
    cur.success = prev.success + 1
    cur.latency = {
        "server": Histogram({5.0: 3.0, math.inf: 3.0}, 3.0),
        "model": Histogram({5.0: 4.0, math.inf: 4.0}, 4.0),
    }
    w = model_window("m", prev, cur, 0.0, 1.0)
    assert w.latency_source is None and w.p99_ms is None  # not timed by another source


def test_a_streaming_models_first_traced_tokens_are_counted_not_taken_as_a_baseline() -> None:
    """The reader's first-token histogram appears with the first streamed request: the window that
    sees it appear counts it from zero (it once dropped that window's requests)."""
    prev, cur = ModelSample(), ModelSample(success=4)
    cur.ttft = {"server": hist([120.0] * 4)}
    w = model_window("chat", prev, cur, 0.0, 1.0)
    assert w.ttft_source == "server" and w.ttft_buckets[math.inf] == 4
    assert w.ttft_p99_ms is not None and 100 < w.ttft_p99_ms <= 125


def test_a_traced_models_requests_wait_for_their_trace_not_another_source() -> None:
    """The page counted requests whose trace files land a pass later: the window times none of
    them (not the model's own histogram, not Triton's minute-long summary); the next one does."""
    prev, cur = ModelSample(), ModelSample(success=4)
    cur.latency = {"server": hist([]), "model": hist([5.0] * 4)}
    cur.quantiles = {"request": {0.99: 9_000.0}}
    w = model_window("guard", prev, cur, 0.0, 1.0)
    assert w.requests == 4 and w.latency_source is None and w.p99_ms is None
    later = ModelSample(success=4)
    later.latency = {"server": hist([7.0] * 4), "model": hist([5.0] * 4)}
    w2 = model_window("guard", cur, later, 1.0, 2.0)
    assert w2.latency_source == "server" and w2.latency_buckets[math.inf] == 4
