"""The SLO controller's policy as tables: protective steps, release, hysteresis, cooldown, panic,
the floor a release finds, regime keys, neighbours and their ranking, exploring and abandoning."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from domain.control import (
    RUNGS,
    SHED,
    ControlConfig,
    Known,
    Observation,
    Reading,
    State,
    Trial,
    decide,
    fingerprint,
    ladder,
    levels,
    model_target,
    neighbours,
    rank_neighbours,
    regime_key,
    traffic_moving,
)
from domain.spec import Knobs, resolve_spec

SPEC = resolve_spec("default")
START = {m.name: m.knobs for m in SPEC.models}
CFG = ControlConfig()
REGIME = "chat-llm:r2 embeddings:c1 reranker:c0 safety-guard:r4"


def obs(chat: float | None = 50.0, guard: float | None = 5.0, *, pending: float = 0.0, goodput: float = 80.0,
        regime: str | None = REGIME, known: dict[str, Known] | None = None, alert: str | None = None,
        history: tuple[Trial, ...] = (), failures: float = 0.0) -> Observation:  # fmt: skip
    return Observation(
        {
            "chat-llm": Reading("chat-llm", 200.0, chat),
            "safety-guard": Reading("safety-guard", 20.0, guard, pending, failures),
        },
        regime, goodput, known or {}, history, alert,
    )  # fmt: skip


def settled(**kw: object) -> State:
    """A state in REGIME, confirmed long ago."""
    base = {"incumbent": START, "regime": REGIME, "seen_regime": REGIME, "seen_since": 0.0}
    base.update(kw)
    return State(**base)  # type: ignore[arg-type]


def test_the_ladder_goes_from_the_incumbent_towards_the_protective_corner() -> None:
    steps = levels(SPEC, START, ladder())
    names = [rung for rung, _ in steps]
    # critical-first: the defaults give both latency-critical models a compute token.
    # then a spare guard instance, then bulk compute at the lowest priority their bounds allow
    assert names[:4] == [None, "critical-first", "critical-instances", "bulk-background"]
    top = steps[-1][1]
    assert top["safety-guard"].resources == {} and top["chat-llm"].resources == {}
    assert top["safety-guard"].instances == 2  # the guard's bounds allow more; chat's [1, 1] do not
    assert top["embeddings"].instances == 1 and top["reranker"].instances == 1
    assert top["embeddings"].resources == {}  # nobody waits at the rate limiter's head
    assert top["embeddings"].priority == 1  # priority orders only instances waiting for tokens
    assert top["embeddings"].max_queue_delay_us == 0  # a delay only slows closed-loop bulk clients
    assert top["embeddings"].max_queue_size == 0  # no shedding unless the config asks for it
    assert top["embeddings"].compute_priority == "min" and top["chat-llm"].compute_priority == "default"
    # The top is a fixed point: protecting it changes nothing, so nothing is reloaded.
    assert levels(SPEC, top, ladder()) == [(None, top)]
    shed = levels(SPEC, START, ladder(rungs=(*RUNGS, SHED)))[-1]
    assert shed[0] == "bulk-shed" and shed[1]["embeddings"].max_queue_size == 1


def test_history_reorders_the_ladder_most_effective_first_within_free_and_costly() -> None:
    # bulk-background brought the worst ratio to 0.6 of what it was, critical-first to 0.9: first of
    # the rungs that cost no bulk work; bulk-shed (0.5) first of those that do, never below a
    # free rung (free rungs are never released, so a costly rung under one would stay for good).
    effects = {"bulk-shed": 0.5, "bulk-background": 0.6, "critical-first": 0.9}
    order = [r.name for r in ladder(effects, (*RUNGS, SHED))]
    assert order == ["bulk-background", "critical-first", "critical-instances", "bulk-shed", "bulk-instances"]
    assert [r.name for r in ladder()] == [r.name for r in RUNGS]  # without history: the default order


@pytest.mark.parametrize(
    ("chat", "guard", "pending", "state", "now", "kind", "level"),
    [
        # 150 / 200 = 0.75 < 0.85: nothing to do
        (150.0, 5.0, 0.0, settled(), 100.0, "hold", 0),
        # 180 / 200 = 0.9 >= 0.85: the first rung
        (180.0, 5.0, 0.0, settled(), 100.0, "protect", 1),
        # the guard's queue: 8 waiting is protected whatever its latency
        (50.0, 5.0, 8.0, settled(), 100.0, "protect", 1),
        # 1 s after the last step, with a 5 s cooldown: wait for it to show
        (180.0, 5.0, 0.0, settled(level=1, last_step_at=99.0), 100.0, "hold", 1),
        # 5 s after: the next rung
        (180.0, 5.0, 0.0, settled(level=1, last_step_at=95.0), 100.0, "protect", 2),
        # 31 ms / 20 = 1.55 >= 1.5: panic, every rung at once
        (50.0, 31.0, 0.0, settled(level=1, last_step_at=94.0), 100.0, "panic", 4),
        # ...but not while the last step settles (a reload's CPU is no reason for another)
        (50.0, 31.0, 0.0, settled(level=1, last_step_at=99.5), 100.0, "hold", 1),
    ],
)
def test_protective_steps(
    chat: float, guard: float, pending: float, state: State, now: float, kind: str, level: int
) -> None:
    d = decide(SPEC, obs(chat, guard, pending=pending), state, now, CFG)
    assert (d.kind, d.state.level) == (kind, level)
    if kind == "protect":
        assert d.target == levels(SPEC, START, ladder())[level][1] and not d.known_safe
        assert d.model in ("chat-llm", "safety-guard") and d.reason
    if kind == "panic":
        assert d.known_safe and d.target == levels(SPEC, START, ladder())[-1][1]


def test_no_step_while_the_last_change_is_still_being_applied() -> None:
    applying = Observation(obs(180.0).readings, REGIME, 80.0, applying=True)
    d = decide(SPEC, applying, settled(level=1, last_step_at=50.0), 100.0, CFG)
    # The settling time restarts: it counts from when the change is in.
    assert d.kind == "hold" and d.state.last_step_at == 100.0
    assert decide(SPEC, obs(180.0), d.state, 105.0, CFG).kind == "protect"


def test_a_failed_latency_critical_request_is_a_breach() -> None:
    d = decide(SPEC, obs(failures=1.0), settled(), 100.0, CFG)
    assert d.kind == "panic" and "failed" in d.reason


def test_an_alert_is_a_breach() -> None:
    d = decide(SPEC, obs(alert="SloBurn on safety-guard"), settled(), 100.0, CFG)
    assert d.kind == "protect" and "SloBurn" in d.reason


@pytest.mark.parametrize(
    ("chat", "calm_since", "last_step_at", "kind"),
    [
        # 100 / 200 = 0.5 < 0.75 over 30 s, none at risk, last step 30 s ago: release one rung
        (100.0, 70.0, 70.0, "release"),
        # calm only 10 s: hold
        (100.0, 90.0, 70.0, "hold"),
        # 0.8 is under protect_at but over release_below (hysteresis): never released
        (160.0, 50.0, 50.0, "hold"),
        # calm 30 s but the last step was 5 s ago: hold
        (100.0, 70.0, 95.0, "hold"),
    ],
)
def test_release_with_hysteresis_and_cooldown(
    chat: float, calm_since: float, last_step_at: float, kind: str
) -> None:
    d = decide(
        SPEC, obs(chat), settled(level=4, calm_since=calm_since, last_step_at=last_step_at), 100.0, CFG
    )
    assert d.kind == kind
    if kind == "release":
        assert (
            d.rung == "bulk-instances"
            and d.state.level == 3
            and d.known_safe
            and d.state.released_at == 100.0
        )
        assert d.target == levels(SPEC, START, ladder())[3][1]


def test_rungs_that_cost_no_bulk_work_are_never_released_they_become_the_incumbent() -> None:
    steps = levels(SPEC, START, ladder())
    # Level 3: the three free rungs (off the tokens, a spare guard instance, bulk in the background).
    d = decide(SPEC, obs(100.0), settled(level=3, calm_since=70.0, last_step_at=70.0), 100.0, CFG)
    assert d.kind == "floor" and d.target is None and d.keep and d.rung == "bulk-background"
    assert d.state.level == 0 and d.state.incumbent == steps[3][1]
    assert "critical-first, critical-instances, bulk-background stay" in d.reason
    # From there on the ladder has only the costly rungs left, and exploring may start (level 0).
    assert [r for r, _ in levels(SPEC, d.state.incumbent, ladder())][1:] == ["bulk-instances"]
    later = decide(SPEC, obs(100.0), d.state, 100.0 + CFG.explore_calm_s, CFG)
    assert later.kind == "explore"


def test_a_breach_right_after_a_release_makes_the_rung_the_floor() -> None:
    released = decide(SPEC, obs(100.0), settled(level=4, calm_since=50.0, last_step_at=50.0), 100.0, CFG)
    assert released.kind == "release"
    # 2 s later a breach is the reload settling: not yet a reason.
    assert decide(SPEC, obs(190.0), released.state, 102.0, CFG).kind == "hold"
    # 10 s later the chat SLA nears again: level 4 was needed; it becomes the incumbent.
    d = decide(SPEC, obs(190.0), released.state, 110.0, CFG)
    assert d.kind == "floor" and d.keep and d.known_safe
    assert d.state.level == 0 and d.state.incumbent == levels(SPEC, START, ladder())[4][1]


def test_regimes_are_centres_of_rates_and_backlogs_with_hysteresis() -> None:
    steady = ({"chat-llm": 3.0, "safety-guard": 15.0}, {"embeddings": 2.0, "reranker": 0.9})
    key = regime_key(SPEC, *steady)
    # log2 3 = 1.58; log2 2 = 1.0; log2 0.9 = -0.15; log2 15 = 3.91
    assert key == "chat-llm:r1.6 embeddings:c1.0 reranker:c-0.2 safety-guard:r3.9"
    assert regime_key(SPEC, {}, {}) is None
    # Poisson wander (chat at 2.4/s: log2 1.26, 0.32 from the centre) stays in it...
    assert regime_key(SPEC, {**steady[0], "chat-llm": 2.4}, steady[1], previous=key) == key
    # ...a doubling of chat (log2 6 = 2.58, 1.0 away) is a new regime...
    doubled = regime_key(SPEC, {**steady[0], "chat-llm": 6.0}, steady[1], previous=key)
    assert doubled is not None and doubled != key and "chat-llm:r2.6" in doubled
    # ...and coming back near the first one joins it again rather than making a third.
    back = regime_key(SPEC, {**steady[0], "chat-llm": 2.6}, steady[1], previous=doubled, seen=[key, doubled])
    assert back == key
    # A model that goes idle is another regime.
    assert "reranker:idle" in str(regime_key(SPEC, steady[0], {"embeddings": 2.0}, previous=key))


def test_a_window_that_straddles_a_step_is_not_a_regime_of_its_own() -> None:
    steady = ({"chat-llm": 3.0, "safety-guard": 15.0}, {"embeddings": 2.0, "reranker": 0.9})
    key = regime_key(SPEC, *steady)
    tripled = ({**steady[0], "chat-llm": 9.0}, steady[1])  # the last 10 s: log2 9 = 3.17
    # 10 s into a tripling of chat the 30 s window holds 5/s: 0.74 (log 2) from the centre, a
    # regime of its own before, but 0.85 from the last 10 s: moving, so still the old regime...
    straddling = ({**steady[0], "chat-llm": 5.0}, steady[1])
    assert traffic_moving(SPEC, straddling, tripled)
    assert regime_key(SPEC, *straddling, previous=key, latest=tripled) == key
    assert regime_key(SPEC, *straddling, previous=key) not in (None, key)  # what it was
    # ...and once the two agree (0.17 apart), one new regime, centred on where traffic went (the
    # last 10 s, 9/s: log2 3.17), not on the 30 s window's 8/s that still holds some of the step.
    settled = ({**steady[0], "chat-llm": 8.0}, steady[1])
    assert not traffic_moving(SPEC, settled, tripled)
    new = regime_key(SPEC, *settled, previous=key, latest=tripled)
    assert new == "chat-llm:r3.2 embeddings:c1.0 reranker:c-0.2 safety-guard:r3.9"
    # A model busy over the 30 s window but under the least that counts over the last 10 s is
    # keyed busy, at that least (log2 0.5 = -1), not idle: idle against busy is another regime.
    fading = ({**steady[0], "chat-llm": 9.0}, {**steady[1], "reranker": 0.6})
    assert "reranker:c-1.0" in str(regime_key(SPEC, *fading, latest=(tripled[0], {"embeddings": 2.0})))
    # With no regime yet, moving traffic still gets one.
    assert regime_key(SPEC, *straddling, latest=tripled) is not None
    # A backlog hovering at the edge of idle (0.55 in flight over 30 s, 0.4 over the last 10 s,
    # under the 0.5 that counts) is not traffic moving...
    assert not traffic_moving(
        SPEC, (steady[0], {**steady[1], "reranker": 0.55}), (steady[0], {**steady[1], "reranker": 0.4})
    )
    # ...a model that stopped is: its last 10 s are idle while the 30 s window still holds it.
    assert traffic_moving(SPEC, steady, (steady[0], {"embeddings": 2.0}))


def test_a_regime_seen_before_brings_its_incumbent_back_at_once() -> None:
    safer = levels(SPEC, START, ladder())[4][1]
    other = "chat-llm:r3 embeddings:c1 reranker:c0 safety-guard:r4"
    known = {other: Known(safer, 40.0)}
    first = decide(SPEC, obs(regime=other, known=known), settled(), 100.0, CFG)
    assert first.kind == "hold"  # seen once: not yet confirmed
    d = decide(SPEC, obs(regime=other, known=known), first.state, 105.0, CFG)
    assert d.kind == "regime" and d.known_safe and d.target == safer and d.state.regime == other


def test_a_new_regime_starts_protected_over_the_most_protective_known_safe() -> None:
    known = {
        "a": Known(levels(SPEC, START, ladder())[2][1], 70.0),
        "b": Known(levels(SPEC, START, ladder())[4][1], 30.0),
    }
    state = settled(seen_regime="new", seen_since=90.0)
    d = decide(SPEC, obs(regime="new", known=known), state, 100.0, CFG)
    # Nothing is known safe for this traffic: every protective step, over the configuration that
    # packed least where something was known (b), which becomes the regime's incumbent.
    top = levels(SPEC, known["b"].knobs, ladder())
    assert d.kind == "regime" and d.known_safe and d.target == top[-1][1] and d.rung == top[-1][0]
    assert d.state.incumbent == known["b"].knobs and d.state.level == len(top) - 1
    assert d.state.regime == "new" and d.state.incumbent_goodput == 30.0
    # Already protected that far: the regime changes, nothing is reloaded.
    at_top = settled(seen_regime="new", seen_since=90.0, incumbent=known["b"].knobs, level=len(top) - 1)
    kept = decide(SPEC, obs(regime="new", known=known), at_top, 100.0, CFG)
    assert kept.kind == "regime" and kept.target is None and kept.state.level == len(top) - 1
    # Nothing known safe anywhere: every protective step over what runs.
    bare = decide(SPEC, obs(regime="new"), settled(seen_regime="new", seen_since=90.0), 100.0, CFG)
    assert bare.target == levels(SPEC, START, ladder())[-1][1] and bare.state.incumbent == START


def test_a_new_regime_gives_back_its_costly_rungs_one_at_a_time_then_keeps_the_free_ones() -> None:
    steps = levels(SPEC, START, ladder())
    top = len(steps) - 1
    d = decide(SPEC, obs(regime="new"), settled(seen_regime="new", seen_since=90.0), 100.0, CFG)
    assert d.state.level == top
    calm = obs(regime="new", guard=5.0, known={})
    t, state, kinds = 100.0, d.state, []
    for _ in range(top + 1):  # each release waits out its 30 s of calm
        t += CFG.release_after_s + 1
        r = decide(SPEC, calm, replace(state, calm_since=t - CFG.release_after_s - 1), t, CFG)
        kinds.append((r.kind, r.rung))
        state = r.state
        if r.kind == "floor":
            break
    costly = [rung.name for rung in ladder() if rung.costs_bulk]
    # The costly rungs go first, the costliest (the top) first; the free rungs stay as the incumbent.
    assert kinds == [("release", name) for name in reversed(costly)] + [("floor", "bulk-background")]
    assert state.level == 0 and state.incumbent == steps[top - len(costly)][1]


def test_neighbours_move_one_knob_one_step_towards_bulk_work() -> None:
    incumbent = levels(SPEC, START, ladder())[-1][1]
    # As the fleet runs them: the built-ins' own batch sizes (the spec leaves them at 0).
    incumbent |= {
        "embeddings": incumbent["embeddings"].with_values({"max_batch_size": 64}),
        "reranker": incumbent["reranker"].with_values({"max_batch_size": 32}),
    }
    for what, knobs in neighbours(SPEC, incumbent):
        changed = [m for m in knobs if knobs[m] != incumbent[m]]
        assert len(changed) == 1 and SPEC.model(changed[0]).role == "bulk", what
    whats = [w for w, _ in neighbours(SPEC, incumbent)]
    assert "embeddings instances 1 -> 2" in whats and "embeddings max_queue_delay_us 0 -> 5000" in whats
    # the batch size both ways, by powers of two; never the compute priority back (it costs bulk
    # work next to nothing, so raising it could only spend the margin)
    assert not any("compute_priority" in w for w in whats)
    assert "embeddings max_batch_size 64 -> 32" in whats and "reranker max_batch_size 32 -> 16" in whats
    assert not any("tokens" in w or w.split()[1] == "priority" for w in whats)  # none left to give back
    capped = {**incumbent, "embeddings": incumbent["embeddings"].model_copy(update={"max_queue_size": 1})}
    assert "embeddings queue cap 1 -> off" in [w for w, _ in neighbours(SPEC, capped)]


def test_ranking_uses_the_regimes_history_and_drops_what_failed() -> None:
    incumbent = levels(SPEC, START, ladder())[-1][1]
    first, second = neighbours(SPEC, incumbent)[:2]
    history = (Trial(first[1], safe=False, goodput=0.0), Trial(second[1], safe=True, goodput=60.0))
    ranked = rank_neighbours(SPEC, incumbent, history, {}, 0.0)
    assert first[0] not in [w for w, _ in ranked]  # broke an SLA here before
    assert ranked[0][0] == second[0]  # held, with its goodput known
    tabu = {fingerprint(second[1]): 100.0}
    assert second[0] not in [w for w, _ in rank_neighbours(SPEC, incumbent, history, tabu, 50.0)]


@pytest.mark.parametrize(
    ("elsewhere", "first"),
    [
        ((), 0),  # nothing known anywhere: the order of `neighbours`
        ((("first", False),), 1),  # it broke an SLA in another regime: the next move goes first
        ((("first", True),), 1),  # it held there, packing too little to be kept: the same
        ((("first", True), ("second", False)), 2),  # both did worse elsewhere: the third
        ((("first", True), ("first", True), ("second", False)), 2),  # two no-gains weigh one break
        ((("first", True), ("second", True), ("third", False)), 3),  # the fourth, untouched
    ],
)
def test_an_untried_move_ranks_by_what_it_did_in_other_regimes(
    elsewhere: tuple[tuple[str, bool], ...], first: int
) -> None:
    incumbent = levels(SPEC, START, ladder())[-1][1]
    moves = neighbours(SPEC, incumbent)
    whats = {"first": moves[0][0], "second": moves[1][0], "third": moves[2][0]}
    trials = [Trial({}, safe, 50.0 if safe else 0.0, whats[name]) for name, safe in elsewhere]
    ranked = rank_neighbours(SPEC, incumbent, (), {}, 0.0, elsewhere=trials)
    assert ranked[0][0] == moves[first][0], [w for w, _ in ranked[:4]]


def test_this_regimes_own_trials_outweigh_other_regimes() -> None:
    incumbent = levels(SPEC, START, ladder())[-1][1]
    (first, knobs), (second, _) = neighbours(SPEC, incumbent)[:2]
    here = (Trial(knobs, safe=True, goodput=60.0, what=first),)
    elsewhere = [Trial({}, False, 0.0, first), Trial({}, False, 0.0, first)]
    ranked = rank_neighbours(SPEC, incumbent, here, {}, 0.0, elsewhere=elsewhere)
    assert ranked[0][0] == first  # held here, with its goodput known: what it did elsewhere is weaker
    untried = rank_neighbours(SPEC, incumbent, (), {}, 0.0, elsewhere=elsewhere)
    assert untried[0][0] == second and first in [w for w, _ in untried]  # later, never dropped
    # a break elsewhere weighs more than holding there without enough gain to be kept
    order = [w for w, _ in rank_neighbours(SPEC, incumbent, (), {}, 0.0, elsewhere=[
        Trial({}, False, 0.0, first), Trial({}, True, 40.0, second)])]  # fmt: skip
    assert order.index(second) < order.index(first), order


def test_explores_only_with_headroom_and_abandons_on_the_first_bad_window() -> None:
    calm = settled(calm_since=0.0)
    assert decide(SPEC, obs(150.0), calm, 100.0, CFG).kind == "hold"  # 0.75: no headroom to explore
    d = decide(SPEC, obs(100.0, 5.0), calm, 100.0, CFG)
    assert d.kind == "explore" and d.state.candidate is not None and not d.known_safe
    assert d.target == d.state.candidate.knobs
    # The next tick its window nears the guard's target: back to the incumbent, known safe.
    bad = decide(SPEC, obs(100.0, 18.0), d.state, 101.0, CFG)
    assert bad.kind == "abandon" and bad.known_safe and bad.target == START
    assert bad.state.candidate is None and fingerprint(d.state.candidate.knobs) in bad.state.tabu


@pytest.mark.parametrize(("chat_ms", "starts_one"), [(80.0, True), (120.0, False)])
def test_a_neighbour_that_starts_an_instance_needs_more_headroom(chat_ms: float, starts_one: bool) -> None:
    more = next(k for w, k in neighbours(SPEC, START) if "instances" in w and _adds_instance(k))
    # It held here before and packed the most: ranked first, tried at 40% of target...
    history = (Trial(more, safe=True, goodput=120.0),)
    d = decide(SPEC, replace(obs(chat_ms, 5.0), history=history), settled(calm_since=0.0), 100.0, CFG)
    assert d.kind == "explore" and d.state.candidate is not None
    # ...but at 60%, under `explore_below` (70%) yet over `explore_instances_below` (50%), the next
    # move that starts nothing is tried instead.
    assert _adds_instance(d.state.candidate.knobs) is starts_one, d.state.candidate.what


def _adds_instance(knobs: dict[str, Knobs]) -> bool:
    return any(k.instances > START[m].instances for m, k in knobs.items())


def test_a_trial_the_traffic_leaves_ends_unjudged_and_the_new_regime_starts_protected() -> None:
    explore = decide(SPEC, obs(100.0, 5.0), settled(calm_since=0.0), 100.0, CFG)
    assert explore.kind == "explore" and explore.state.candidate is not None
    tried = explore.state.candidate
    # Bulk doubles 3 s into the trial: the new regime is seen, and confirmed `regime_confirm_s` later.
    seen = decide(SPEC, obs(100.0, 5.0, regime="new"), explore.state, 103.0, CFG)
    assert seen.kind == "hold" and seen.state.candidate is not None
    d = decide(SPEC, obs(100.0, 5.0, regime="new"), seen.state, 103.0 + CFG.regime_confirm_s, CFG)
    top = levels(SPEC, START, ladder())
    assert d.kind == "regime" and d.known_safe and d.target == top[-1][1] and d.state.level == len(top) - 1
    assert d.state.candidate is None and d.state.incumbent == START
    # unjudged: the move is not tabu, and the journal says the trial ended
    assert fingerprint(tried.knobs) not in d.state.tabu and tried.what in d.reason
    # A regime seen before: its incumbent comes back over the candidate.
    known = {"new": Known(top[2][1], 40.0)}
    back = decide(SPEC, obs(100.0, 5.0, regime="new", known=known), seen.state, 108.0, CFG)
    assert back.kind == "regime" and back.target == top[2][1] and back.state.candidate is None
    # The candidate already runs the new regime's protective corner: it stays, nothing to undo.
    at_top = replace(seen.state, candidate=replace(tried, knobs=top[-1][1]))
    kept = decide(SPEC, obs(100.0, 5.0, regime="new"), at_top, 108.0, CFG)
    assert kept.kind == "regime" and kept.target is None and kept.state.candidate is None


@pytest.mark.parametrize(("goodput", "kind"), [(90.0, "adopt"), (82.0, "reject")])
def test_a_trial_is_adopted_only_for_a_real_gain(goodput: float, kind: str) -> None:
    explore = decide(SPEC, obs(100.0, 5.0, goodput=80.0), settled(calm_since=0.0), 100.0, CFG)
    assert explore.kind == "explore"
    end = 100.0 + CFG.warmup_s + CFG.trial_s
    d = decide(SPEC, obs(100.0, 5.0, goodput=goodput), explore.state, end, CFG)
    # 90 >= 80 * 1.05 = 84: adopted; 82 < 84: the incumbent comes back
    assert d.kind == kind
    if kind == "adopt":
        assert d.keep and d.state.incumbent == explore.state.candidate.knobs and d.target is None  # type: ignore[union-attr]
    else:
        assert d.target == START and d.known_safe


def test_knowing_nothing_safe_it_starts_protected() -> None:
    fresh = State(incumbent=START)
    d = decide(SPEC, obs(regime=None), fresh, 100.0, CFG)
    # Every protective step: the protective corner, before traffic finds the spec's knobs out.
    steps = levels(SPEC, START, ladder())
    assert d.state.level == len(steps) - 1
    assert d.kind == "regime" and d.known_safe and d.target == steps[-1][1]
    known = {"a": Known(START, 80.0)}
    assert decide(SPEC, obs(regime=None, known=known), fresh, 100.0, CFG).kind == "hold"


def test_releases_and_exploring_read_the_settled_figure() -> None:
    # The guard's 3 s p99 at 10 ms (0.5) but 16 ms over 30 s (0.8 >= 0.75): not released...
    noisy = Observation({"chat-llm": Reading("chat-llm", 200.0, 50.0),
                         "safety-guard": Reading("safety-guard", 20.0, 10.0, settled_ms=16.0)}, REGIME, 80.0)  # fmt: skip
    assert (
        decide(SPEC, noisy, settled(level=4, calm_since=50.0, last_step_at=50.0), 100.0, CFG).kind == "hold"
    )
    # ...and a 3 s p99 at 16 ms (0.8, not at risk) with 10 ms over 30 s (0.5) is.
    steady = Observation({"chat-llm": Reading("chat-llm", 200.0, 50.0),
                          "safety-guard": Reading("safety-guard", 20.0, 16.0, settled_ms=10.0)}, REGIME, 80.0)  # fmt: skip
    assert (
        decide(SPEC, steady, settled(level=4, calm_since=50.0, last_step_at=50.0), 100.0, CFG).kind
        == "release"
    )
    assert (
        decide(SPEC, noisy, settled(calm_since=50.0, last_step_at=50.0), 100.0, CFG).kind == "hold"
    )  # no exploring


def test_readings_ratio() -> None:
    assert Reading("m", 20.0, 10.0).ratio == 0.5
    assert Reading("m", 20.0, None).ratio == 0.0
    assert Reading("m", 20.0, 1.0, failures=1).ratio == math.inf
    assert Knobs() == Knobs()


def test_with_enough_history_a_model_of_it_picks_the_neighbour() -> None:
    # As the fleet runs them: the built-ins' own batch sizes (the spec leaves them at 0).
    incumbent = levels(SPEC, START, ladder())[-1][1]
    incumbent |= {
        m: incumbent[m].with_values({"max_batch_size": b}) for m, b in (("embeddings", 64), ("reranker", 32))
    }
    emb = incumbent["embeddings"]
    # The regime's history: more embeddings instances packed more and held; a second reranker
    # instance broke the guard; longer reranker delays held and packed less.
    history = tuple(
        [Trial({**incumbent, "embeddings": emb.with_values({"instances": n})}, True, 80.0 + 10 * n) for n in (2, 3, 4)]
        + [Trial({**incumbent, "reranker": incumbent["reranker"].with_values({"instances": 2})}, False, 0.0)]
        + [Trial({**incumbent, "reranker": incumbent["reranker"].with_values({"max_queue_delay_us": d})}, True, 60.0)
           for d in (25_000, 30_000)]
    )  # fmt: skip
    target = model_target(SPEC, incumbent, 75.0, history, seed=len(history))
    assert target is not None and target["embeddings:instances"] > 1.5  # towards more instances
    ranked = rank_neighbours(SPEC, incumbent, history, {}, 0.0, 75.0)
    assert ranked[0][0] == "embeddings instances 1 -> 2"
    assert "reranker instances 1 -> 2" not in [w for w, _ in ranked]  # it broke an SLA
    assert ranked == rank_neighbours(
        SPEC, incumbent, history, {}, 0.0, 75.0
    )  # the same history, the same order
    # Too little history: no model, the nearest-trials rule alone.
    assert model_target(SPEC, incumbent, 75.0, history[:3]) is None


@pytest.mark.parametrize(
    ("fast", "settled_p99", "kind"),
    [
        (10.0, 16.0, "hold"),  # p95 over 3 s at 0.5, p99 over 30 s at 0.8: one slow request is no risk
        (10.0, 21.0, "protect"),  # but the SLA's own p99 over 30 s broken is
        (18.0, 12.0, "protect"),  # and so is the 3 s p95 at 0.9: many requests slowed down at once
    ],
)
def test_at_risk_on_the_fast_p95_or_the_settled_p99(fast: float, settled_p99: float, kind: str) -> None:
    o = Observation({"chat-llm": Reading("chat-llm", 200.0, 50.0),
                     "safety-guard": Reading("safety-guard", 20.0, fast, settled_ms=settled_p99)}, REGIME, 80.0)  # fmt: skip
    assert decide(SPEC, o, settled(last_step_at=0.0), 100.0, CFG).kind == kind


def _guard_settled_at(p99_ms: float) -> Observation:
    return Observation({"chat-llm": Reading("chat-llm", 200.0, 50.0),
                        "safety-guard": Reading("safety-guard", 20.0, 8.0, settled_ms=p99_ms)}, REGIME, 80.0)  # fmt: skip


@pytest.mark.parametrize(
    ("p99_ms", "kind"),
    [
        (15.0, "hold"),  # 0.75 of target: the release keeps its margin
        (18.0, "floor"),  # 0.9: it ate the margin; back before the live table's row breaks
        (21.0, "floor"),
    ],
)
def test_a_release_on_probation_is_judged_from_protect_at(p99_ms: float, kind: str) -> None:
    released = decide(SPEC, obs(100.0), settled(level=4, calm_since=50.0, last_step_at=50.0), 100.0, CFG)
    assert released.kind == "release"
    assert decide(SPEC, _guard_settled_at(p99_ms), released.state, 110.0, CFG).kind == kind
    # Outside a watch the same 0.9 is no risk (hysteresis: the target itself is), only a 1.05 is.
    after = 100.0 + CFG.floor_watch_s + 1.0
    outside = decide(SPEC, _guard_settled_at(p99_ms), released.state, after, CFG).kind
    assert outside == ("hold" if p99_ms < 20.0 else "protect")


def test_a_trial_is_abandoned_when_its_settled_figure_nears_the_target() -> None:
    explore = decide(SPEC, obs(100.0, 5.0), settled(calm_since=0.0), 100.0, CFG)
    assert explore.kind == "explore"
    assert decide(SPEC, _guard_settled_at(15.0), explore.state, 110.0, CFG).kind == "hold"
    d = decide(SPEC, _guard_settled_at(18.0), explore.state, 110.0, CFG)
    assert d.kind == "abandon" and d.target == START and "p99 over 30 s 18 ms" in d.reason


def test_a_breach_only_the_settled_figure_shows_waits_for_a_window_after_the_last_step() -> None:
    o = Observation({"chat-llm": Reading("chat-llm", 200.0, 40.0, settled_ms=210.0),
                     "safety-guard": Reading("safety-guard", 20.0, 5.0)}, REGIME, 80.0)  # fmt: skip
    # 10 s after a step the 30 s p99 still holds the breach from before it: hold
    assert decide(SPEC, o, settled(level=1, last_step_at=90.0), 100.0, CFG).kind == "hold"
    # 30 s after, the whole window is the step's: it did not help, the next rung
    assert decide(SPEC, o, settled(level=1, last_step_at=70.0), 100.0, CFG).kind == "protect"


@pytest.mark.parametrize(
    ("p99", "level", "last_step_at", "interference_at", "kind"),
    [
        # every rung in force for 60 s, the guard's 30 s p99 25 ms over 20: it cannot share its device
        (25.0, 4, 40.0, -math.inf, "interference"),
        # ...said once a minute at most
        (25.0, 4, 40.0, 70.0, "hold"),
        # only 30 s since the last rung: the protection has not had its chance
        (25.0, 4, 70.0, -math.inf, "hold"),
        # a rung left to take: take it, do not give up on sharing
        (25.0, 3, 40.0, -math.inf, "protect"),
        # near the target (p95 at 90%) but not over it: no rule
        (19.0, 4, 40.0, -math.inf, "hold"),
    ],
)
def test_a_breach_the_whole_ladder_cannot_stop_is_interference(
    p99: float, level: int, last_step_at: float, interference_at: float, kind: str
) -> None:
    guard = Reading("safety-guard", 20.0, 18.0, settled_ms=p99)
    o = Observation({"chat-llm": Reading("chat-llm", 200.0, 50.0), "safety-guard": guard}, REGIME, 80.0)
    state = settled(level=level, last_step_at=last_step_at, interference_at=interference_at)
    d = decide(SPEC, o, state, 100.0, CFG)
    assert d.kind == kind
    if kind == "interference":
        assert d.model == "safety-guard" and d.cannot_share == ("embeddings", "reranker")
        assert "safety-guard cannot share dev0 with embeddings, reranker" in d.reason
        assert d.target is None and d.state.interference_at == 100.0


PIPE = resolve_spec("pipeline")
PIPE_START = {m.name: m.knobs for m in PIPE.models}


@pytest.mark.parametrize(
    ("queues", "gate"),
    [
        # the guard waits 180 ms of a 250 ms target: it gates the chat pipeline
        ({"safety-guard": 180.0, "chat-llm": 8.0}, "safety-guard"),
        # the longest queue is 20 ms, under a tenth of 250: nothing gates it
        ({"safety-guard": 20.0, "chat-llm": 8.0}, None),
        # no window for a step yet counts as no queue
        ({"chat-llm": 40.0}, "chat-llm"),
    ],
)
def test_gating_step(queues: dict[str, float], gate: str | None) -> None:
    from domain.control import gating_step

    assert gating_step(PIPE, "chat-pipeline", queues, 250.0) == gate
    assert gating_step(PIPE, "safety-guard", queues, 250.0) is None  # not a pipeline


def test_a_pipeline_at_risk_gets_an_instance_on_the_step_that_gates_it_first() -> None:
    readings = {
        "chat-pipeline": Reading("chat-pipeline", 250.0, 400.0),
        "retrieval": Reading("retrieval", 300.0, 50.0),
    }
    o = Observation(readings, "r", 10.0, gating={"chat-pipeline": "safety-guard"})
    state = State(incumbent=PIPE_START, regime="r", seen_regime="r", seen_since=0.0)
    d = decide(PIPE, o, state, 100.0, CFG)
    # 400 / 250 = 1.6 would panic; the gating step comes first, at the protection level that runs
    assert (d.kind, d.rung, d.model, d.keep) == ("protect", "gating-step", "chat-pipeline", True)
    assert d.target is not None and d.target["safety-guard"].instances == 2
    assert d.state.incumbent["safety-guard"].instances == 2 and d.state.level == 0
    assert "safety-guard gates chat-pipeline" in d.reason
    # At its bound (chat-llm [1, 1]) the ladder takes over.
    o2 = Observation(readings, "r", 10.0, gating={"chat-pipeline": "chat-llm"})
    assert decide(PIPE, o2, state, 100.0, CFG).kind == "panic"
    # Within the cooldown of the last step: wait.
    assert decide(PIPE, o, replace(state, last_step_at=98.0), 100.0, CFG).kind == "hold"
