"""What start-up decides about a tuning run the store says is running, as tables: whether its
owner died, and where an interrupted run leaves the fleet (its last safe configuration)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from controlplane.tuning import Owner, last_safe, owner_died, process_alive
from domain.spec import Knobs, resolve_spec
from tuner.loop import knobs_to_attr

SPEC = resolve_spec(None)
START = {m.name: m.knobs for m in SPEC.models}
ALL = SPEC.model_names
ME = Owner("host-a", 100, "5000")


def k(model: str, **change: object) -> Knobs:
    return START[model].model_copy(update=change)


def fleet(**changes: Knobs) -> dict[str, Knobs]:
    return {**START, **changes}


def trial(
    number: int, value: float, violations: dict[str, float], knobs: dict[str, Knobs] | None = None
) -> FrozenTrial:
    """A measured trial as the tuner tells it: its score and knobs as user attributes."""
    attrs: dict[str, object] = {"score": {"goodput": value, "violations": violations, "memory_gb": 63.0}}
    if knobs is not None:
        attrs["knobs"] = knobs_to_attr(knobs)
    t = optuna.trial.create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs)
    t.number = number
    return t


def running(number: int) -> FrozenTrial:
    t = optuna.trial.create_trial(state=TrialState.RUNNING)
    t.number = number
    return t


MET = {"chat-llm": -0.2, "safety-guard": -0.5}
BROKEN = {"chat-llm": 0.4, "safety-guard": -0.5}
EMB4 = fleet(embeddings=k("embeddings", instances=4))
EMB3 = fleet(embeddings=k("embeddings", instances=3))
CHAT0 = fleet(**{"chat-llm": k("chat-llm", resources={})})
BEFORE = fleet(reranker=k("reranker", priority=2))  # a person's change before the run


@pytest.mark.parametrize(
    ("models", "trials", "before", "expected"),
    [
        # the best feasible trial wins (goodput 30 > 20), the run's pre-run configuration next
        (ALL, [trial(0, 20, MET, EMB3), trial(1, 30, MET, EMB4), running(2)], BEFORE,
         [(EMB4, "its best feasible trial 1"), (BEFORE, "the configuration applied before it")]),
        # a better trial that broke an SLA is not safe: the feasible one (goodput 20) is
        (ALL, [trial(0, 20, MET, EMB3), trial(1, 90, BROKEN, EMB4)], BEFORE,
         [(EMB3, "its best feasible trial 0"), (BEFORE, "the configuration applied before it")]),
        # nothing feasible measured yet (the baseline broke, the next trial was interrupted)
        (ALL, [trial(0, 20, BROKEN, EMB3), running(1)], BEFORE,
         [(BEFORE, "the configuration applied before it")]),
        # died before its first trial was told
        (ALL, [running(0)], BEFORE, [(BEFORE, "the configuration applied before it")]),
        # a measured trial without knobs (written before trials kept them) proves nothing
        (ALL, [trial(0, 20, MET)], BEFORE, [(BEFORE, "the configuration applied before it")]),
        # only the models in the run's scope move back
        (["embeddings"], [trial(0, 20, MET, CHAT0), trial(1, 30, MET, EMB4)], BEFORE,
         [({"embeddings": EMB4["embeddings"]}, "its best feasible trial 1"),
          ({"embeddings": BEFORE["embeddings"]}, "the configuration applied before it")]),
        # a model without an applied version before the run takes the spec's knobs
        (["embeddings", "reranker"], [], {"reranker": k("reranker", priority=2)},
         [({"embeddings": START["embeddings"], "reranker": k("reranker", priority=2)},
           "the configuration applied before it (the spec's knobs for embeddings)")]),
        # nothing in scope: nothing to write back
        ([], [trial(0, 20, MET, EMB3)], BEFORE, []),
    ],
)  # fmt: skip
def test_last_safe_configuration(
    models: list[str],
    trials: list[FrozenTrial],
    before: dict[str, Knobs],
    expected: list[tuple[dict[str, Knobs], str]],
) -> None:
    got = last_safe(models, trials, before, START)
    assert [(c.knobs, c.source) for c in got] == [({m: kn[m] for m in models}, s) for kn, s in expected]


@pytest.mark.parametrize(
    ("owner", "heartbeat_at", "ours", "alive", "died"),
    [
        (None, None, False, True, "it has no owner on record"),  # written before runs had owners
        ("garbage", 990.0, False, True, "it has no owner on record"),
        # this very process: at start-up no runner of ours runs it; later one may
        ("host-a/100/5000", 999.0, False, True, "no runner of this process (host-a/100/5000) runs it"),
        ("host-a/100/5000", 999.0, True, True, None),
        # another process on this host: its pid (with the same start time) decides, not the lease
        ("host-a/200/7000", 999.0, False, True, None),
        ("host-a/200/7000", 999.0, False, False, "its process host-a/200/7000 is gone"),
        ("host-a/100/4000", 999.0, False, False, "its process host-a/100/4000 is gone"),  # our pid, reused
        # another host: the lease (60 s) decides; 1000 - 950 = 50 s < 60 s is alive
        ("host-b/100/5000", 950.0, False, False, None),
        ("host-b/100/5000", 930.0, False, True,
         "its owner host-b/100/5000 on another host has not renewed its lease (70 s, lease 60 s)"),
        ("host-b/100/5000", None, False, True,
         "its owner host-b/100/5000 on another host has not renewed its lease (never, lease 60 s)"),
    ],
)  # fmt: skip
def test_owner_died(
    owner: str | None, heartbeat_at: float | None, ours: bool, alive: bool, died: str | None
) -> None:
    assert (
        owner_died(owner, heartbeat_at, 1000.0, me=ME, ours=ours, alive=lambda _: alive, lease_s=60) == died
    )


def test_an_owner_round_trips_and_this_process_is_alive() -> None:
    me = Owner.this_process()
    assert Owner.parse(str(me)) == me
    assert Owner.parse("a/host/with/slashes/12/34") == Owner("a/host/with/slashes", 12, "34")
    assert process_alive(me)
    assert not process_alive(Owner(me.host, me.pid, "1"))  # the same pid, started at another time
