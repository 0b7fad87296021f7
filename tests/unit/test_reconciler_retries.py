"""The reconciler against a fake fleet (no tritonserver) and an SQLite store, on its own clock: a
server that does not answer is retried with capped backoff for as long as the version is the
newest, never given up; it is called once per cycle, not once per model; a refusal fails at once;
an older version still desired is never applied after a newer one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from controlplane.reconciler import Reconciler, Result
from controlplane.startup import register_fleet
from domain.spec import FleetSpec, Knobs, resolve_spec
from runtime.fleet import ApplyResult, Fleet, ReconfigurationError
from runtime.server import Endpoints
from store import configs
from store.db import Store
from store.models import ConfigVersion

SPEC = resolve_spec(None)  # four models, all on triton0
DOWN = ReconfigurationError("triton0 did not answer: Deadline Exceeded", temporary=True)


class FakeFleet:
    """Runs the spec's knobs; `down` makes every read fail as a server that does not answer,
    `refuse` makes every apply fail as Triton refusing the configuration."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.running = {m.name: m.knobs for m in spec.models}
        self.down = False
        self.refuse: str | None = None
        self.reads = 0
        self.applied: list[tuple[str, Knobs]] = []

    def observed_knobs(self, model: str) -> Knobs:
        self.reads += 1
        if self.down:
            raise DOWN
        return self.running[model]

    def apply(self, model: str, knobs: Knobs) -> ApplyResult:
        if self.refuse:
            raise ReconfigurationError(self.refuse)
        before, self.running[model] = self.running[model], knobs
        self.applied.append((model, knobs))
        return ApplyResult(model, before, knobs, "reload", 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    endpoints = {"triton0": Endpoints("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")}
    register_fleet(s, SPEC, endpoints)
    yield s
    s.dispose()


def reconciler(store: Store, fleet: FakeFleet, clock: Clock) -> Reconciler:
    return Reconciler(cast(Fleet, fleet), store, clock=clock)


def propose(store: Store, model: str, **changes: Any) -> tuple[int, Knobs]:
    knobs = SPEC.model(model).knobs.model_copy(update=changes)
    with store.session() as session:
        return configs.propose(session, model, knobs.model_dump(), "person", "test", time.time()).id, knobs


def state(store: Store, version_id: int) -> str:
    with store.session() as session:
        row = session.get(ConfigVersion, version_id)
        assert row is not None
        return row.state


def test_an_unreachable_server_is_retried_with_capped_backoff_and_never_given_up(store: Store) -> None:
    fleet, clock = FakeFleet(SPEC), Clock()
    r = reconciler(store, fleet, clock)
    version_id, knobs = propose(store, "embeddings", instances=3)
    fleet.down = True
    waits = []
    for _ in range(12):  # more than twice the old limit of 5 attempts
        assert r.reconcile_once() == [Result("embeddings", version_id, "retry", error=str(DOWN))]
        assert state(store, version_id) == "desired"
        next_at = r._retries[version_id].next_at
        waits.append(next_at - clock.now)
        clock.now = next_at - 0.01
        assert r.reconcile_once() == [Result("embeddings", version_id, "waiting")]  # backing off
        clock.now = next_at
    # 1, 2, 4, 8, 16 s, then 32 is capped at 30 s, and stays there
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 7
    fleet.down = False
    assert r.reconcile_once() == [Result("embeddings", version_id, "applied", "reload")]
    assert fleet.applied == [("embeddings", knobs)] and state(store, version_id) == "applied"
    assert r._retries == {}


def test_a_server_that_does_not_answer_is_called_once_a_cycle(store: Store) -> None:
    """Four models wait on one hung server: one read deadline per cycle, not four."""
    fleet, clock = FakeFleet(SPEC), Clock()
    r = reconciler(store, fleet, clock)
    ids = [propose(store, m, max_queue_size=7)[0] for m in sorted(SPEC.model_names)]
    fleet.down = True
    results = r.reconcile_once()
    assert fleet.reads == 1
    assert [(x.version_id, x.outcome) for x in results] == [(i, "retry") for i in ids]
    assert {state(store, i) for i in ids} == {"desired"}


def test_a_refusal_fails_at_once(store: Store) -> None:
    fleet, clock = FakeFleet(SPEC), Clock()
    r = reconciler(store, fleet, clock)
    version_id, _ = propose(store, "reranker", max_queue_size=9)
    fleet.refuse = "reranker: Triton refused the new configuration, the previous one stays: bad"
    [result] = r.reconcile_once()
    assert (result.outcome, result.error) == ("failed", fleet.refuse)
    assert state(store, version_id) == "failed"


def test_an_older_version_still_desired_is_overtaken_not_applied(store: Store) -> None:
    """As a writer that bypassed the model's lock would leave them: two desired versions."""
    fleet, clock = FakeFleet(SPEC), Clock()
    r = reconciler(store, fleet, clock)
    older, _ = propose(store, "reranker", instances=2)
    newer, knobs = propose(store, "reranker", instances=3)
    with store.session() as session:
        row = session.get(ConfigVersion, older)
        assert row is not None
        row.state, row.error = "desired", None
    assert r.reconcile_once() == [Result("reranker", newer, "applied", "reload")]
    assert r.reconcile_once() == []
    assert fleet.applied == [("reranker", knobs)]
    with store.session() as session:
        row = session.get(ConfigVersion, older)
        assert row is not None
        assert (row.state, row.error) == ("superseded", f"overtaken by version {newer} before it was applied")
