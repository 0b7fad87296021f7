"""50 proposals for one model at once, on SQLite and on PostgreSQL, against a real tritonserver:
exactly one version stays desired, the newest (the highest id), and the reconciler applies that one
only. On PostgreSQL, before proposals locked the model's row, several stayed desired (each
proposal's SELECT under READ COMMITTED missed the ones not yet committed) and the reconciler walked
back through them after applying the newest: six reloads, ending on an old configuration."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.reconciler import Reconciler, Result
from controlplane.startup import register_fleet
from domain.spec import Knobs, load_spec
from runtime.fleet import ApplyResult, Fleet
from store import configs
from store.db import Store
from tests.integration.test_lifecycle import small_spec

pytestmark = pytest.mark.integration

MODEL = "safety-guard"
WRITERS = 50


@pytest.fixture
def fleet(tmp_path: Path, store: Store) -> Iterator[Fleet]:
    with Fleet(load_spec(small_spec(tmp_path)), tmp_path / "work") as f:
        register_fleet(store, f.spec, {s.name: f.endpoints(s.name) for s in f.spec.servers})
        yield f


def knobs_of(fleet: Fleet, i: int) -> Knobs:
    """Proposal i's knobs: each proposal its own queue delay, so an apply names its version."""
    return fleet.knobs(MODEL).model_copy(update={"max_queue_delay_us": 100 + 10 * i})


def propose_at_once(store: Store, fleet: Fleet) -> dict[int, Knobs]:
    """WRITERS threads, each with its own session, propose together; {version id: knobs}."""
    start = threading.Barrier(WRITERS)
    out: dict[int, Knobs] = {}
    errors: list[BaseException] = []

    def write(i: int) -> None:
        knobs = knobs_of(fleet, i)
        try:
            start.wait()
            with store.session() as session:
                row = configs.propose(
                    session, MODEL, knobs.model_dump(), "person", f"writer {i}", time.time()
                )
                version_id = row.id
            out[version_id] = knobs
        except BaseException as exc:  # reported below, with the test's failure
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(out) == WRITERS
    return out


def states(store: Store) -> dict[int, tuple[str, str | None]]:
    with store.session() as session:
        return {v.id: (v.state, v.error) for v in configs.history(session, MODEL, limit=1000)}


def spy_applies(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> list[Knobs]:
    """The knobs of every apply that reached Triton, in order."""
    applied: list[Knobs] = []
    real = fleet.apply

    def apply(model: str, knobs: Knobs | None = None, **changes: Any) -> ApplyResult:
        result = real(model, knobs, **changes)
        if result.path != "unchanged":
            applied.append(result.after)
        return result

    monkeypatch.setattr(fleet, "apply", apply)
    return applied


def test_only_the_newest_of_50_concurrent_proposals_stays_desired_and_is_applied(
    store: Store, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    proposed = propose_at_once(store, fleet)
    newest = max(proposed)
    after = states(store)
    assert [i for i, (state, _) in after.items() if state == "desired"] == [newest]
    overtaken = {i: error for i, (state, error) in after.items() if i in proposed and i != newest}
    assert all(after[i][0] == "superseded" for i in overtaken)
    assert all(error and error.startswith("overtaken by version") for error in overtaken.values())

    applies = spy_applies(fleet, monkeypatch)
    reconciler = Reconciler(fleet, store)
    assert reconciler.reconcile_once() == [Result(MODEL, newest, "applied", "reload")]
    assert reconciler.reconcile_once() == []  # nothing older is left to walk back to
    assert applies == [proposed[newest]]
    assert fleet.observed_knobs(MODEL) == proposed[newest]  # straight from Triton
    with store.session() as session:
        assert configs.applied(session)[MODEL].id == newest
        assert configs.desired(session) == {}


def test_proposals_racing_a_running_reconciler_never_walk_back(
    store: Store, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler may apply an intermediate version that was the newest when it looked, but
    never one older than a version it already applied, and it ends on the newest."""
    applies = spy_applies(fleet, monkeypatch)
    reconciler = Reconciler(fleet, store, poll_s=0.1)
    reconciler.start()
    try:
        proposed = propose_at_once(store, fleet)
        newest = max(proposed)
        assert reconciler.converge([newest], timeout_s=60) == {newest: "applied"}
    finally:
        reconciler.stop()
    order = {knobs.max_queue_delay_us: i for i, knobs in proposed.items()}
    applied_ids = [order[k.max_queue_delay_us] for k in applies]
    assert applied_ids == sorted(set(applied_ids)) and applied_ids[-1] == newest, applied_ids
    assert fleet.observed_knobs(MODEL) == proposed[newest]
    after = states(store)
    assert [i for i, (state, _) in after.items() if state in ("desired", "applied")] == [newest]
