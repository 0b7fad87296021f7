"""The SLO controller on the real fleet: a step in bulk load breaks the guard's SLA (four bulk
instances share two cores with the guard's one) and the controller brings it back, as the guard's
clients see it. The fleet starts off the rate limiter's tokens: a reload while instances wait there
can stall Triton 2.51 for about 40 s (docs/triton.md), which the controller's first rung avoids
but this test does not set out to show. The measured time is printed; the bound is loose enough for a
loaded 2-core machine (`benchmarks.shift` measures the figure)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controlplane import startup
from controlplane.settings import Settings
from domain.spec import resolve_spec
from domain.stats import percentile
from runtime.load import LoadRun, ModelLoad, Phase, targets_for
from store import control as records

pytestmark = pytest.mark.integration

QUIET = (
    ModelLoad("chat-llm", rate=3.0, words=(16, 64)),
    ModelLoad("safety-guard", rate=15.0, words=(16, 64)),
)
BULK = (
    ModelLoad("embeddings", concurrency=4, batch=8, words=(16, 96)),
    ModelLoad("reranker", concurrency=2, batch=4, words=(16, 96)),
)
RECOVERY_BOUND_S = 60.0
GUARD_TARGET_MS = 50.0


def test_a_bulk_step_breaks_the_guard_and_the_controller_brings_it_back(tmp_path: Path) -> None:
    base = resolve_spec("default")
    # The guard's SLA at 50 ms, not 20: 20 ms is the edge of what this 2-core host reaches with bulk
    # work running at all, and beside a CPU hog no configuration reaches it; the test is about
    # control (the starting knobs give the guard hundreds of milliseconds under the bulk step).
    spec = base.model_copy(
        update={"models": [m.model_copy(update={
            "knobs": m.knobs.model_copy(update={"resources": {}}),
            "sla": m.sla.model_copy(update={"target_ms": GUARD_TARGET_MS}) if m.name == "safety-guard" else m.sla,
        }) for m in base.models]}
    )  # fmt: skip
    guard = spec.model("safety-guard").sla
    assert guard is not None
    settings = Settings(data_dir=tmp_path / "data", controller_mode="advisory")
    with startup.running(settings, spec, resume=False) as system:
        controller = system.plane.controller
        targets = targets_for(spec, lambda s: system.fleet.endpoints(s).grpc)
        load = LoadRun([], targets, duration_s=1, seed=3, phases=[Phase("quiet", 20, QUIET)]).start()
        load.join()
        # The quiet regime as the controller classified it: the spec's knobs are known safe there.
        assert controller.state is not None and controller.state.regime is not None, controller.status(50)
        with system.store.session() as session:
            records.keep(session, controller.state.regime, system.fleet.all_knobs(), 0.0, "test", time.time())
        controller.set_mode("on")
        step = LoadRun(
            [], targets, duration_s=1, seed=4,
            phases=[Phase("quiet", 10, QUIET), Phase("bulk step", 80, QUIET + BULK)],
        ).start()  # fmt: skip
        step.join()
        status = controller.status(200)

    started = step.phase_started[1]
    done = sorted(
        (r.started + r.latency, r.latency * 1000 if r.error is None else float("inf"))
        for r in step.records
        if r.model == "safety-guard"
    )

    def p99_at(t: float) -> float | None:  # the guard's p99 over the 5 s its clients saw before t
        vals = [v for at, v in done if t - 5 < at <= t]
        return percentile(vals, 99) if len(vals) >= 20 else None

    seconds = [started + k for k in range(1, 80)]
    broken = [t for t in seconds if (p := p99_at(t)) is not None and p > guard.target_ms]
    assert broken, "the bulk step did not break the guard's SLA: the test shows nothing"
    first = broken[0]
    back = next(
        (t for t in seconds if t > first and (p := p99_at(t)) is not None and p <= guard.target_ms), None
    )
    assert back is not None, f"the guard's p99 never came back under {guard.target_ms} ms: {status}"
    print(
        f"\nguard SLA broken {first - started:.0f} s after the bulk step, back under target {back - first:.0f} s later"
    )
    assert back - first <= RECOVERY_BOUND_S
    # It stays protected: over the last 20 s of the step most of the guard's requests are within
    # target (beside a CPU hog a p99 there is a few stray requests; the starting knobs gave under 10%).
    tail = [v for at, v in done if at >= started + 60]
    within = sum(v <= guard.target_ms for v in tail) / max(len(tail), 1)
    assert within >= 0.9, (within, status)
    acted = [a for a in status["last_actions"] if a["applied"] and a["kind"] in ("protect", "panic")]
    assert acted and all(a["reason"] for a in acted)
    assert any(a["model"] == "safety-guard" for a in acted)
