"""The SLO controller on the real fleet: a step in bulk load (four embeddings and two reranker
clients join) puts the guard's SLA at risk and the controller brings it back, as the guard's clients
see it. The fleet starts off the rate limiter's tokens: a reload while
instances wait there can stall Triton 2.51 for about 40 s (docs/triton.md), which the controller's
first rung avoids but this test does not set out to show. The controller may act before the
clients' 5 s p99 shows the break: what the test asserts is that it acted on the risk the step made,
that the guard's p99 came back under target within a bound, and that its clients saw it held
afterwards.

The guard's target is set where this host's step breaks it. A 20 s probe of the step, with the
controller advisory, then 40 s of the quiet load, measures the guard's p95 as slatune serves it
(what the controller reads); the target is 0.8 of that p95, held between 2 and 3.5 times the
clients' quiet p95. On an idle 2-core host the quiet p95 was 7 ms and the step took the p99 to 32-42
ms; beside a CPU hog the p99 was 45 ms quiet and 243 ms in the step, the hog stalling the clients
themselves. A target fixed from the quiet load alone (at least the spec's 20 ms, 3.5 times the quiet
p95) missed twice: once the controller's 3 s p95 read 33 ms at most against 26 ms, once (a CI host,
quiet p95 6.2 ms) the step took the guard's p99 to 19 ms and slatune's 10 s p95 to 11-14 ms against
21.8: no reading at risk in the whole step, the test showing nothing. The premise's failure message
prints the target, the probe, the quiet quantiles and the step's figures."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane import startup
from controlplane.settings import Settings
from domain.control import parse_regime
from domain.spec import resolve_spec
from domain.stats import percentile
from domain.windows import aggregate
from runtime.load import LoadRun, ModelLoad, Phase, targets_for
from store import control as records
from store import queries
from store.configs import set_sla

pytestmark = pytest.mark.integration

QUIET = (
    ModelLoad("chat-llm", rate=3.0, words=(16, 64)),
    ModelLoad("safety-guard", rate=15.0, words=(16, 64)),
)
BULK = (
    ModelLoad("embeddings", concurrency=4, batch=8, words=(16, 96)),
    ModelLoad("reranker", concurrency=2, batch=4, words=(16, 96)),
)
PROBE_P95_TIMES = 0.8
"""The guard's target, in times its p95 as slatune served the probe: a step in the same load reads
over the controller's `protect_at` (85%) of it. The probe, the first bulk burst of the run, served
the guard slower than the step did in one run (p95 23 ms against 12-17 ms)."""
QUIET_P95_TIMES = (2.0, 3.5)
"""The guard's target, in times its clients' quiet p95: no lower (its protected p99 must come back
under it), no higher (the step must break it)."""
RECOVERY_BOUND_S = 60.0
"""From the controller's first protective step to the guard's 5 s p99 back under target, as the
server served it: what the controller reads and its knobs can move. The bound tells protected from
unprotected (which does not come back within the 80 s step: the spec's knobs keep about 5% of its
requests within 20 ms); the figure itself is `benchmarks.shift`'s, as clients saw it (10 s is its
goal). Here the clients' view is asserted over the step's last 20 s (`within` below), and the time
it took them is printed. Beside a CPU hog the clients stall on the hog for a core, which no knob
fixes: in two runs their 5 s p99 was over target in 72 and 73 of 79 s and came back 46 and 56 s
after the step, the server's after 20-30 and 37 s; earlier runs there measured the clients' 6-37 s.
Idle, both 1-6 s."""


def test_a_bulk_step_puts_the_guard_at_risk_and_the_controller_brings_it_back(tmp_path: Path) -> None:
    base = resolve_spec("default")
    spec = base.model_copy(
        update={"models": [m.model_copy(update={"knobs": m.knobs.model_copy(update={"resources": {}})})
                           for m in base.models]}
    )  # fmt: skip
    spec_sla = spec.model("safety-guard").sla
    assert spec_sla is not None
    settings = Settings(data_dir=tmp_path / "data", controller_mode="advisory")
    with startup.running(settings, spec, resume=False) as system:
        controller = system.plane.controller
        targets = targets_for(spec, lambda s: system.fleet.endpoints(s).grpc)
        # The probe: the step as this host serves it with nothing protected (advisory), then the quiet
        # load for 40 s: past the controller's 30 s release and regime windows, so that none of the
        # probe is in what it reads when it is switched on, and its regime is the quiet load's.
        wall = time.time() - time.monotonic()  # the clients' clock onto the store's and the journal's
        probe = LoadRun(
            [], targets, duration_s=1, seed=3, phases=[Phase("probe", 20, QUIET + BULK), Phase("quiet", 40, QUIET)]
        ).start()  # fmt: skip
        probe.join()
        settled = probe.phase_started[1] + 15
        quiet = [
            r.latency * 1000 for r in probe.records
            if r.model == "safety-guard" and r.error is None and r.started >= settled
        ]  # fmt: skip
        with system.store.session() as session:
            probed = queries.recent_windows(session, 0.0).get("safety-guard", [])
        in_probe = [w for w in probed if probe.phase_started[0] + 5 <= w.end - wall <= probe.phase_started[1]]
        probe_p95 = aggregate(in_probe).p95_ms
        assert probe_p95 is not None, "the guard served nothing in the probe"
        floor, ceiling = (times * (percentile(quiet, 95) or 0.0) for times in QUIET_P95_TIMES)
        target = min(max(PROBE_P95_TIMES * probe_p95, floor), ceiling)
        guard = spec_sla.model_copy(update={"target_ms": round(target, 1)})
        with system.store.session() as session:
            set_sla(session, "safety-guard", guard)
        # The quiet regime as the controller classified it: the spec's knobs are known safe there.
        regime = controller.state.regime if controller.state is not None else None
        assert regime is not None and parse_regime(regime)["embeddings"] is None, controller.status(50)
        with system.store.session() as session:
            records.keep(session, regime, system.fleet.all_knobs(), 0.0, "test", time.time())
        # The fast loop is what this test shows: a step it did not see coming. A regime change would
        # start the bulk step's traffic at the protective corner before it could break anything
        # (nothing is known safe for it), so regimes stay as they are while it runs.
        controller.cfg = replace(controller.cfg, regime_confirm_s=math.inf)
        controller.set_mode("on")
        step = LoadRun(
            [], targets, duration_s=1, seed=4,
            phases=[Phase("quiet", 10, QUIET), Phase("bulk step", 80, QUIET + BULK)],
        ).start()  # fmt: skip
        step.join()
        status = controller.status(200)
        with system.store.session() as session:
            windows = queries.recent_windows(session, 0.0).get("safety-guard", [])

    started = step.phase_started[1]
    done = sorted(
        (r.started + r.latency, r.latency * 1000 if r.error is None else float("inf"))
        for r in step.records
        if r.model == "safety-guard"
    )

    def within(vals: list[float]) -> float:  # the fraction of the guard's requests within target
        return sum(v <= guard.target_ms for v in vals) / max(len(vals), 1)

    quiet_q = ", ".join(f"p{q} {percentile(quiet, q) or 0:.1f}" for q in (50, 95, 99))
    table = [
        f"the guard's target {guard.target_ms} ms (its clients' quiet {quiet_q} ms; slatune's p95 in the probe {probe_p95:.1f} ms)",
        "s after the step | the guard's p99 (ms), its clients / slatune | slatune's p95 | within target (clients)",
    ]
    for k in range(0, 80, 10):
        lo, hi = started + k, started + k + 10
        client = [v for at, v in done if lo <= at < hi]
        server = aggregate([w for w in windows if lo + wall <= w.end < hi + wall])
        table.append(
            f"{k:3d}-{k + 10:<3d} | {percentile(client, 99) or 0:7.1f} / {server.p99_ms or 0:7.1f} | "
            f"{server.p95_ms or 0:7.1f} | {within(client):.3f}"
        )
    print("\n" + "\n".join(table))
    acted = [
        a for a in reversed(status["last_actions"])
        if a["applied"] and a["kind"] in ("protect", "panic") and a["at"] - wall >= started
    ]  # fmt: skip
    # The premise: the bulk step put the guard's SLA at risk, as slatune read it, and it acted.
    assert acted, "the bulk step never put an SLA at risk: the test shows nothing:\n" + "\n".join(table)
    first = acted[0]
    # Any of the fast loop's readings at risk: a latency-critical model's 3 s p95 at `protect_at` of
    # target (the journal's `before_ratio` is that figure), its p99 over the release window broken,
    # or `pending_at` requests waiting; the reason says which model and figures.
    assert first["model"] in ("safety-guard", "chat-llm") and first["reason"], first
    acted_at = first["at"] - wall

    def p99_at(t: float) -> float | None:  # the guard's p99 over the 5 s its clients saw before t
        vals = [v for at, v in done if t - 5 < at <= t]
        return percentile(vals, 99) if len(vals) >= 20 else None

    def served_p99_at(t: float) -> float | None:  # the same, as the server served them
        return aggregate([w for w in windows if t - 5 < w.end - wall <= t]).p99_ms

    seconds = [started + k for k in range(1, 80)]
    over = [t for t in seconds if (p := p99_at(t)) is not None and p > guard.target_ms]
    back = {
        view: next((t for t in seconds if t >= acted_at and (p := f(t)) is not None and p <= guard.target_ms), None)
        for view, f in (("clients", p99_at), ("server", served_p99_at))
    }  # fmt: skip
    print(
        f"first protective step {acted_at - started:.1f} s after the bulk step, on {first['model']} "
        f"(at {first['before_ratio'] or 0:.2f} of target); the guard's clients' 5 s p99 over target in "
        f"{len(over)} of {len(seconds)} s; back under target, s after the step: "
        + ", ".join(
            f"{view} {'never' if t is None else f'{max(t - acted_at, 0):.0f}'}" for view, t in back.items()
        )
    )
    for a in reversed(status["last_actions"]):
        print(f"{a['at'] - wall - started:6.1f} s {a['kind']:8} {a['rung'] or '':18} {a['reason']}")
    served_back = back["server"]
    assert served_back is not None, f"the guard's p99 never came back under {guard.target_ms} ms: {status}"
    assert served_back - acted_at <= RECOVERY_BOUND_S
    # It stays protected: over the last 20 s of the step nine in ten of the guard's requests are
    # within target as its clients see them (idle: 98-99%; beside a hog, whose core the clients
    # share, 94-99%; unprotected, the spec's knobs keep about 5% of them within 20 ms).
    tail = [v for at, v in done if at >= started + 60]
    assert within(tail) >= 0.90, (within(tail), status)
