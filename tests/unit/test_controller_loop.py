"""The controller's loop on a real store (SQLite) with an injected clock and a fake fleet: windows
written as the collector writes them, each tick read, decided, recorded through the proposal path
and journaled; advisory mode records only; off and a tuning run leave the fleet alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.controller import Action, Controller
from controlplane.startup import register_fleet
from domain.control import Candidate, State
from domain.spec import Knobs, resolve_spec
from domain.windows import AppliedVersion, ModelWindow
from runtime.server import Endpoints
from store import configs, queries
from store import control as records
from store.db import Store

SPEC = resolve_spec("default")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    endpoints = {"triton0": Endpoints("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")}
    register_fleet(s, SPEC, endpoints)
    return s


def write(store: Store, clock: Clock, guard_ms: float, chat_ms: float = 50.0) -> None:
    """One second of windows for every model, as the collector writes them."""
    end = clock.t
    guard = ModelWindow("safety-guard", end - 1, end, 15, 15, request_rate=15, inference_rate=15,
                        p50_ms=guard_ms / 3, p99_ms=guard_ms)  # fmt: skip
    write_with(store, clock, guard, chat_ms)


def write_with(store: Store, clock: Clock, guard: ModelWindow, chat_ms: float = 50.0) -> None:
    """One second of windows: `guard`, and the other models at the demo's rates."""
    end = clock.t
    windows = [
        guard,
        ModelWindow("chat-llm", end - 1, end, 3, 3, request_rate=3, inference_rate=3, ttft_p99_ms=chat_ms,
                    p50_ms=400.0),
        ModelWindow("embeddings", end - 1, end, 8, 8, request_rate=8, inference_rate=64, p50_ms=250.0),
        ModelWindow("reranker", end - 1, end, 7, 7, request_rate=7, inference_rate=28, p50_ms=130.0),
    ]  # fmt: skip
    with store.session() as session:
        versions: dict[str, AppliedVersion] = {}
        queries.add_windows(session, queries.model_ids(session), windows, versions, 1.0)


def controller(
    store: Store, clock: Clock, mode: str = "on", busy: str | None = None
) -> tuple[Controller, dict[str, Knobs]]:
    running = {m.name: m.knobs for m in SPEC.models}
    slas = {m.name: m.sla for m in SPEC.models}
    nudged: list[int] = []
    c = Controller(SPEC, store, lambda: dict(running), lambda: slas, mode=mode, clock=clock,  # type: ignore[arg-type]
                   nudge=lambda: nudged.append(1), busy=lambda: busy)  # fmt: skip
    return c, running


def test_knowing_nothing_safe_it_starts_protected_through_the_proposal_path(store: Store) -> None:
    clock = Clock()
    c, _ = controller(store, clock)
    action = c.tick()
    assert action is not None and action.applied and action.decision.kind == "regime"
    with store.session() as session:
        pending = configs.pending_knobs(session)
        journal = records.actions(session)
    # Every protective step: nobody on the rate limiter's tokens, a spare guard instance, bulk
    # compute at the lowest priority, bulk at its fewest instances (and no bulk queue delay added).
    assert pending["embeddings"].resources == {} and pending["embeddings"].compute_priority == "min"
    assert pending["safety-guard"].resources == {} and pending["safety-guard"].instances == 2
    assert pending["embeddings"].max_queue_delay_us == 0 and pending["embeddings"].instances == 1
    assert [a.kind for a in journal] == ["regime"] and "nothing known safe" in journal[0].reason


def test_a_broken_guard_sla_is_protected_at_once(store: Store) -> None:
    clock = Clock()
    with store.session() as session:  # something is known safe: no protected start
        records.keep(session, "elsewhere", {m.name: m.knobs for m in SPEC.models}, 80.0, "adopt", clock.t)
    c, _ = controller(store, clock)
    write(store, clock, guard_ms=40.0)  # 2x the guard's 20 ms target
    action = c.tick()
    assert action is not None and action.applied
    assert action.decision.kind == "panic" and action.decision.model == "safety-guard"
    with store.session() as session:
        pending = configs.pending_knobs(session)
        (journal,) = records.actions(session)
    assert pending["embeddings"].resources == {} and pending["safety-guard"].instances == 2
    assert journal.kind == "panic" and journal.applied and journal.before_ratio == 2.0
    assert "safety-guard at 40 ms (p95, 3 s" in journal.reason


def test_advisory_mode_journals_what_it_would_do_and_changes_nothing(store: Store) -> None:
    clock = Clock()
    c, _ = controller(store, clock, mode="advisory")
    write(store, clock, guard_ms=40.0)
    action = c.tick()
    assert action is not None and not action.applied and action.decision.kind == "regime"
    with store.session() as session:
        assert configs.pending_knobs(session) == {}
        (entry,) = records.actions(session)
    assert (
        entry.mode == "advisory"
        and not entry.applied
        and entry.changes["embeddings"]["compute_priority"] == "min"
    )


@pytest.mark.parametrize(("mode", "ticks"), [("on", 2), ("advisory", 2), ("off", 0)])
def test_what_the_ticks_cost_is_counted_while_the_controller_is_not_off(
    store: Store, mode: str, ticks: int
) -> None:
    clock = Clock()
    c, _ = controller(store, clock, mode=mode)
    for _ in range(2):
        write(store, clock, guard_ms=5.0)
        c.tick()
        clock.t += 1.0
    sample = c.metrics.tick_seconds.collect()[0].samples
    count = next(s.value for s in sample if s.name == "slatune_controller_tick_seconds_count")
    cpu = c.metrics.cpu_seconds.collect()[0].samples[0].value
    assert count == ticks and (cpu > 0) == (ticks > 0), (count, cpu)


@pytest.mark.parametrize(("mode", "busy"), [("off", None), ("on", "tuning run 3")])
def test_off_or_a_tuning_run_leaves_the_fleet_alone(store: Store, mode: str, busy: str | None) -> None:
    clock = Clock()
    c, _ = controller(store, clock, mode=mode, busy=busy)
    write(store, clock, guard_ms=40.0)
    assert c.tick() is None
    with store.session() as session:
        assert configs.pending_knobs(session) == {} and not records.actions(session)


def test_a_new_regime_with_nothing_known_starts_protected_and_gives_back_what_held(
    store: Store,
) -> None:
    clock = Clock()
    c, running = controller(store, clock)
    actions = []

    def healthy(seconds: int) -> None:  # the guard well under target; the reconciler applies each change
        for _ in range(seconds):
            write(store, clock, guard_ms=5.0)
            a = tick_applying(c, running, store, clock)
            actions.extend([(a.decision.kind, a.decision.rung)] if a else [])

    healthy(8)  # protected at the start, before any regime: 8 s of traffic is none yet
    assert actions == [("regime", "bulk-instances")]
    corner = dict(running)
    assert c.state is not None and c.state.level > 0 and corner["embeddings"].instances == 1
    assert c.state.regime is None and c.state.seen_regime is None
    # The regime is keyed once 30 s of traffic are in (confirmed 5 s later); the first, it carries
    # the start's protection on. The costly rung is given back after 30 s under target, then the
    # free ones are kept.
    healthy(80)
    assert actions[1:] == [
        ("release", "bulk-instances"),
        ("regime", None),
        ("floor", "bulk-background"),
    ]
    assert c.state.level == 0 and c.state.incumbent == running
    assert running["embeddings"].instances == 2 and running["embeddings"].compute_priority == "min"
    with store.session() as session:
        known = records.known(session)
        floor = records.actions(session)[0]  # the newest; what runs is kept, unchanged
        assert floor.kind == "floor" and not floor.applied and not floor.changes
    # What held before the first release was kept for the regime; the floor replaced it with what runs.
    assert list(known) == [c.state.regime] and dict(known[c.state.regime].knobs) == running


def test_advisory_mode_never_keeps_a_configuration_that_did_not_run(store: Store) -> None:
    clock = Clock()
    c, _ = controller(store, clock, mode="advisory")
    kinds = []
    # Healthy: it would start protected, then give a rung back after 30 s, keeping what held.
    for _ in range(45):
        write(store, clock, guard_ms=5.0)
        a = c.tick()
        kinds += [a.decision.kind] if a else []
        clock.t += 1.0
    assert "release" in kinds
    with store.session() as session:
        assert records.known(session) == {}  # what held ran with the spec's knobs, not these
        assert configs.pending_knobs(session) == {}
        assert all(not a.applied and a.mode == "advisory" for a in records.actions(session))


def write_tail(store: Store, clock: Clock, slow: int) -> None:
    """One second of windows: 30 guard requests, `slow` of them at 25-30 ms (target 20), the rest
    within 5 ms; the other models as `write` has them."""
    end = clock.t
    guard = ModelWindow(
        "safety-guard", end - 1, end, 30, 30, request_rate=30, inference_rate=30,
        latency_buckets={5.0: 30.0 - slow, 25.0: 30.0 - slow, 30.0: 30.0, float("inf"): 30.0},
    )  # fmt: skip
    write_with(store, clock, guard)


def tick_applying(c: Controller, running: dict[str, Knobs], store: Store, clock: Clock) -> Action | None:
    """One tick, then the reconciler applies what it recorded, and a second passes."""
    a = c.tick()
    with store.session() as session:
        running.update(configs.pending_knobs(session))
        for version in configs.desired(session).values():
            configs.mark_applied(session, version, clock.t)
    clock.t += 1.0
    return a


def released(store: Store) -> tuple[Controller, dict[str, Knobs], Clock, list[tuple[str, str | None]]]:
    """A controller that protected a healthy guard, then released its first rung, a tick ago."""
    clock = Clock()
    c, running = controller(store, clock)
    kinds: list[tuple[str, str | None]] = []
    while ("release", "bulk-instances") not in kinds and len(kinds) < 10:
        write_tail(store, clock, slow=0)
        a = tick_applying(c, running, store, clock)
        kinds += [(a.decision.kind, a.decision.rung)] if a else []
    assert kinds[-1] == ("release", "bulk-instances") and running["embeddings"].instances == 2
    return c, running, clock, kinds


@pytest.mark.parametrize(
    ("calm_s", "slow_s", "within_s"),
    [
        # One guard request in 30 over 25 ms from the release on: the 3 s p95 stays low, and 30 s
        # of windows mostly from before the release still hold the p99 under target after 5 s.
        (0, 8, 6.0),
        # The tail breaks 16 s after it (4 slow requests in the last 10 s): the windows since the
        # release, calm first, still hold the p99 (4 in 600); the live table's last 10 s do not.
        (16, 4, 20.0),
    ],
)
def test_a_release_whose_tail_breaks_is_caught_within_the_watch(
    store: Store, calm_s: int, slow_s: int, within_s: float
) -> None:
    """A release whose tail breaks within the watch: the rung comes back as the regime's floor."""
    c, running, clock, kinds = released(store)
    released_at = clock.t - 1.0
    for slow in [0] * calm_s + [1] * slow_s:
        write_tail(store, clock, slow=slow)
        a = tick_applying(c, running, store, clock)
        kinds += [(a.decision.kind, a.decision.rung)] if a else []
    assert [k for k in kinds if k[0] == "floor"] == [("floor", "bulk-instances")], kinds
    assert c.state is not None and c.state.level == 0
    assert running["embeddings"].instances == 1  # the released rung is back
    with store.session() as session:
        (floor,) = [a for a in records.actions(session) if a.kind == "floor"]
    assert floor.at - released_at <= within_s and "p99 over 10 s" in floor.reason, floor.reason


def test_a_neighbour_whose_tail_breaks_is_abandoned_on_the_windows_since_it(store: Store) -> None:
    """A neighbour on trial, one guard request in 30 over 25 ms since it started: abandoned within
    the tick its own windows break the p99, though 30 s mostly from before it would not say so."""
    clock = Clock()
    c, running = controller(store, clock)
    for _ in range(30):  # calm before the trial
        write_tail(store, clock, slow=0)
        clock.t += 1.0
    write_tail(store, clock, slow=0)
    regime = c.observe(clock.t).regime
    incumbent = {m.name: m.knobs for m in SPEC.models}
    knobs = {**incumbent, "embeddings": incumbent["embeddings"].with_values({"instances": 3})}
    cand = Candidate(knobs, "embeddings instances 2 -> 3", clock.t + c.cfg.warmup_s, 60.0)
    c.state = State(incumbent, regime=regime, seen_regime=regime, candidate=cand, last_step_at=clock.t)
    clock.t += 1.0
    kinds = []
    for _ in range(8):
        write_tail(store, clock, slow=1)
        a = tick_applying(c, running, store, clock)
        kinds += [a.decision.kind] if a else []
        if a is not None:
            break
    assert kinds == ["abandon"] and c.state.candidate is None
    assert running["embeddings"].instances == incumbent["embeddings"].instances  # the incumbent is back
    with store.session() as session:
        (abandon,) = records.actions(session)
    assert "p99 over 10 s" in abandon.reason and clock.t - cand.started_at <= 4.0, abandon.reason


def test_a_regimes_history_is_its_own_and_other_regimes_trials_come_as_weaker_evidence(store: Store) -> None:
    clock = Clock()
    c, running = controller(store, clock)
    what = "embeddings instances 1 -> 2"
    moved = {**running, "embeddings": running["embeddings"].with_values({"instances": 2})}
    with store.session() as session:
        records.add_trial(session, "chat x2", what, moved, False, 0.0, clock.t - 100)
        records.add_trial(session, "steady", "reranker instances 1 -> 2", moved, True, 55.0, clock.t - 50)
    c.state = State(running, regime="steady", seen_regime="steady")
    write(store, clock, guard_ms=5.0)
    obs = c.observe(clock.t)
    assert [t.what for t in obs.history] == ["reranker instances 1 -> 2"]
    assert [(t.what, t.safe, t.knobs) for t in obs.elsewhere] == [(what, False, moved)]
