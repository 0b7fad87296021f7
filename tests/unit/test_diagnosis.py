"""The expert's diagnosis as tables: each rule fires on the evidence it names, stays quiet just
under its threshold, and says what to do."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from domain.diagnosis import (
    Look,
    Thresholds,
    batching_window,
    device_findings,
    diagnose,
    interference,
    look_of,
    pipeline_serialized,
    series,
    too_few_instances,
    top_per_subject,
)
from domain.spec import Knobs, resolve_spec

SPEC = resolve_spec("default")
T = Thresholds()


def look(model: str = "embeddings", **kw: object) -> Look:
    m = SPEC.model(model)
    base: dict[str, object] = dict(
        model=model, role=m.role, device=m.device, seconds=30.0, request_rate=10.0, avg_queue_ms=1.0,
        avg_compute_ms=5.0, avg_batch=4.0, pending=0.0, knobs=m.knobs, max_batch_size=64, windows=30,
    )  # fmt: skip
    base.update(kw)
    return Look(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("queue", "compute", "util", "instances", "fires", "action"),
    [
        # 12 ms queued against 5 ms of compute, the device 40% busy: one more instance
        (12.0, 5.0, 0.4, 2, True, "raise instances 2 -> 3"),
        # the same with the device 90% busy: another instance only shares the same cores
        (12.0, 5.0, 0.9, 2, False, None),
        # queue under compute: the queue is not the problem
        (4.0, 5.0, 0.4, 2, False, None),
        # a 1.5 ms queue against 0.5 ms: noise
        (1.5, 0.5, 0.4, 2, False, None),
        # at the bounds' top (embeddings: [1, 6]): say so
        (12.0, 5.0, 0.4, 6, True, "at their bound (6)"),
        # unknown utilization: no claim about headroom
        (12.0, 5.0, None, 2, False, None),
    ],
)
def test_too_few_instances(
    queue: float, compute: float, util: float | None, instances: int, fires: bool, action: str | None
) -> None:
    k = SPEC.model("embeddings").knobs.with_values({"instances": instances})
    f = too_few_instances(look(avg_queue_ms=queue, avg_compute_ms=compute, knobs=k), util, SPEC, T)
    assert (f is not None) == fires
    if f is not None:
        assert action is not None and action in f.action
        assert f.evidence["avg_queue_ms"] == queue and f.evidence["device_utilization"] == util


@pytest.mark.parametrize(
    ("batch", "rate", "delay", "queue", "compute", "fires", "words"),
    [
        # batches of 1.1 at 20 requests/s waiting 3 ms each, with no queue delay: open a batching window
        (1.1, 20.0, 0, 3.0, 5.0, True, "set max_queue_delay_us"),
        # the same keeping up (0.5 ms in the queue): a bulk model still packs more in batches
        (1.1, 20.0, 0, 0.5, 5.0, True, "set max_queue_delay_us"),
        # the same at 2 requests/s: nothing to batch
        (1.1, 2.0, 0, 0.5, 5.0, False, None),
        # batches of 4: batching works
        (4.0, 20.0, 0, 0.5, 5.0, False, None),
        # full batches (60 of 64) and 8 of 12 ms queued with a 5 ms delay: the delay only adds latency
        (60.0, 20.0, 5000, 8.0, 4.0, True, "shorten max_queue_delay_us (5000 -> 2500)"),
        # full batches, little queueing: fine
        (60.0, 20.0, 5000, 1.0, 4.0, False, None),
        # half-full batches with the delay: the delay is doing its job
        (32.0, 20.0, 5000, 8.0, 4.0, False, None),
    ],
)
def test_batching_window(
    batch: float, rate: float, delay: int, queue: float, compute: float, fires: bool, words: str | None
) -> None:
    k = SPEC.model("embeddings").knobs.with_values({"max_queue_delay_us": delay})
    f = batching_window(
        look(avg_batch=batch, request_rate=rate, knobs=k, avg_queue_ms=queue, avg_compute_ms=compute), T
    )
    assert (f is not None) == fires
    if f is not None:
        assert words is not None and words in f.action and f.kind == "batching-window"


def test_a_latency_critical_model_that_keeps_up_gets_no_batching_advice() -> None:
    guard = look("safety-guard", avg_batch=1.0, request_rate=15.0, avg_queue_ms=0.4)
    assert batching_window(guard, T) is None  # a window would only add to its 20 ms
    assert batching_window(replace(guard, avg_queue_ms=6.0), T) is not None  # its requests wait: batch them


def test_a_model_that_cannot_batch_gets_no_batching_advice() -> None:
    assert (
        batching_window(look(avg_batch=1.0, request_rate=50.0, avg_queue_ms=5.0, max_batch_size=1), T) is None
    )


def test_interference_needs_the_rise_and_the_correlation() -> None:
    guard = look("safety-guard")
    bulk = [0, 0, 10, 10, 40, 40, 80, 80.0]
    rising = [2.0, 2.1, 2.5, 2.6, 4.0, 4.2, 6.0, 6.5]  # 2.05 ms quiet, 6.25 busy: 3x, correlated
    f = interference(guard, rising, bulk, ["embeddings", "reranker"], T)
    assert f is not None and f.kind == "interference" and f.subject == "safety-guard"
    assert f.evidence["compute_ms_quiet"] == pytest.approx(2.05) and f.evidence[
        "compute_ms_busy"
    ] == pytest.approx(6.25)
    assert "co-location rule" in f.action
    flat = [2.0, 2.1, 2.0, 2.2, 2.1, 2.0, 2.2, 2.1]
    assert interference(guard, flat, bulk, ["embeddings"], T) is None  # no rise
    unrelated = [6.0, 2.0, 6.0, 2.0, 6.0, 2.0, 6.0, 2.0]
    assert interference(guard, unrelated, bulk, ["embeddings"], T) is None  # no correlation
    assert interference(guard, rising[:3], bulk[:3], ["embeddings"], T) is None  # too few windows
    assert interference(guard, rising, bulk, [], T) is None  # nothing bulk beside it


def test_an_idle_device_with_queues_and_a_small_device() -> None:
    looks = {
        m.name: look(m.name, avg_queue_ms=10.0, avg_compute_ms=2.0)
        if m.name == "embeddings"
        else look(m.name, avg_queue_ms=0.1, avg_compute_ms=2.0)
        for m in SPEC.models
    }
    found = device_findings(SPEC, looks, {"dev0": 0.1}, T)
    assert [f.kind for f in found] == ["idle-device"] and "embeddings" in f"{found[0].evidence['queued']}"
    small = {"safety-guard": looks["safety-guard"]}  # 1 GB of 80
    found = device_findings(SPEC, small, {"dev0": 0.5}, T)
    assert [f.kind for f in found] == ["small-device"] and "slatune plan" in found[0].action


def test_diagnose_puts_the_latency_critical_model_first_and_tops_one_per_subject() -> None:
    k = SPEC.model("safety-guard").knobs
    looks = {
        "embeddings": look("embeddings", avg_queue_ms=12.0, avg_compute_ms=5.0),
        "safety-guard": look("safety-guard", avg_queue_ms=12.0, avg_compute_ms=5.0, knobs=k),
    }
    found = diagnose(SPEC, looks, {"dev0": 0.4}, {}, {})
    assert [f.subject for f in found][:2] == ["safety-guard", "embeddings"]  # same evidence, weighted
    assert set(top_per_subject(found)) == {"safety-guard", "embeddings", "dev0"}  # dev0: 3 GB of 80 held


@dataclass
class W:
    start: float
    end: float
    requests: float
    success: float
    inference_rate: float = 0.0
    avg_batch: float | None = None
    avg_queue_ms: float | None = None
    avg_compute_input_ms: float | None = None
    avg_compute_infer_ms: float | None = None
    avg_compute_output_ms: float | None = None
    p99_ms: float | None = None
    pending: float = 0.0
    avg_request_ms: float | None = None


def test_looks_and_series_from_windows() -> None:
    a = W(0, 1, 10, 10, 10.0, 1.0, 2.0, 0.1, 3.0, 0.1, 9.0)
    b = W(1, 2, 30, 30, 30.0, 3.0, 6.0, 0.1, 5.0, 0.1, 12.0, pending=2)
    idle = W(2, 3, 0, 0)
    lk = look_of(SPEC, "safety-guard", [a, b, idle], Knobs())
    # means weighted by successes: queue (2*10 + 6*30) / 40 = 5; compute (3.2*10 + 5.2*30) / 40 = 4.7
    assert lk.avg_queue_ms == pytest.approx(5.0) and lk.avg_compute_ms == pytest.approx(4.7)
    assert lk.request_rate == pytest.approx(40 / 3) and lk.windows == 2 and lk.p99_ms == 12.0
    assert lk.pending == 0.0  # the newest window's
    bulk = [replace(a, inference_rate=100.0), replace(b, inference_rate=300.0)]
    compute, load = series(SPEC, {"safety-guard": [a, b, idle], "embeddings": bulk})
    assert compute["safety-guard"] == pytest.approx([3.2, 5.2]) and load["safety-guard"] == [100.0, 300.0]
    assert compute["chat-llm"] == [] and load["chat-llm"] == []


PIPE = resolve_spec("pipeline")


def pipe_look(model: str, **kw: object) -> Look:
    m = PIPE.model(model)
    base: dict[str, object] = dict(
        model=model, role=m.role, device=m.device, seconds=30.0, request_rate=3.0, avg_queue_ms=0.5,
        avg_compute_ms=5.0, avg_batch=1.0, pending=0.0, knobs=m.knobs, max_batch_size=8, windows=30,
        target_ms=m.sla.target_ms if m.sla else None,
    )  # fmt: skip
    base.update(kw)
    return Look(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("guard_queue", "pipeline_ms", "fires"),
    [
        # 180 ms in the guard's queue of a 690 ms pipeline whose steps compute 12 ms: the guard gates it
        (180.0, 690.0, True),
        # a 20 ms guard queue in a 690 ms pipeline: 3% of it, and under a tenth of the 250 ms target
        (20.0, 690.0, False),
        # 180 ms of queue, but the pipeline takes 20 ms: the numbers disagree, say nothing
        (180.0, 20.0, False),
        # a streaming pipeline's 900 ms in the server is its whole stream: 72 ms of queue is over a
        # fifth of its 250 ms first-token target
        (72.0, 900.0, True),
    ],
)
def test_the_step_that_gates_a_pipeline_is_named(guard_queue: float, pipeline_ms: float, fires: bool) -> None:
    pipeline = pipe_look("chat-pipeline", avg_request_ms=pipeline_ms, p99_ms=1400.0)
    steps = [
        pipe_look("safety-guard", avg_queue_ms=guard_queue, avg_compute_ms=7.0),
        pipe_look("chat-llm", avg_queue_ms=8.0, avg_compute_ms=5.0),
    ]
    f = pipeline_serialized(PIPE, pipeline, steps, T)
    assert (f is not None) == fires
    if f is not None:
        assert f.kind == "pipeline-serialized" and f.subject == "chat-pipeline"
        assert f.evidence["gating_step"] == "safety-guard" and f.evidence["safety-guard.instances"] == 1
        assert "raise safety-guard's instances 1 -> 2" in f.action
        found = diagnose(PIPE, {p.model: p for p in (pipeline, *steps)}, {"dev0": 0.5}, {}, {})
        assert found[0].kind == "pipeline-serialized"  # before the steps' own findings


def test_a_streaming_model_batches_in_flight_and_gets_no_batching_advice() -> None:
    chat = pipe_look("chat-llm", avg_batch=1.0, request_rate=20.0, avg_queue_ms=5.0, max_batch_size=8)
    assert batching_window(chat, T) is not None  # the rule alone would fire...
    assert not [
        f for f in diagnose(PIPE, {"chat-llm": chat}, {"dev0": 0.5}, {}, {}) if f.kind == "batching-window"
    ]
