"""A tritonserver frozen (SIGSTOP) or killed (SIGKILL) under a running reconciler, with a desired
version pending: no reconcile cycle waits on the frozen server longer than a read deadline, the
version stays desired while the server cannot answer, however many attempts that takes, and it is
applied once the server is back (once, read back from Triton)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.reconciler import Reconciler
from controlplane.startup import register_fleet
from domain.spec import Knobs, load_spec
from runtime.fleet import Fleet, ReconfigurationError
from store import configs
from store.db import Store
from tests.integration.test_lifecycle import small_spec, wait_for

pytestmark = pytest.mark.integration

MODEL, SERVER = "safety-guard", "triton0"


@dataclass
class Plant:
    fleet: Fleet
    store: Store

    def propose(self, **changes: object) -> tuple[int, Knobs]:
        knobs = self.fleet.knobs(MODEL).model_copy(update=changes)
        with self.store.session() as session:
            row = configs.propose(session, MODEL, knobs.model_dump(), "person", "fault test", time.time())
            return row.id, knobs

    def state(self, version_id: int) -> str:
        with self.store.session() as session:
            row = configs.version(session, MODEL, version_id)
            assert row is not None
            return row.state

    def journal(self, version_id: int) -> list[str | None]:
        with self.store.session() as session:
            return [e.outcome for e in configs.journal(session, version_id)]


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    store = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    store.upgrade()
    with Fleet(load_spec(small_spec(tmp_path)), tmp_path / "work") as fleet:
        register_fleet(store, fleet.spec, {s.name: fleet.endpoints(s.name) for s in fleet.spec.servers})
        yield Plant(fleet, store)
    store.dispose()


def temporary_failures(reconciler: Reconciler) -> float:
    value = reconciler.metrics.registry.get_sample_value(
        "slatune_reconcile_failures_total", {"model": MODEL, "kind": "temporary"}
    )
    return value or 0.0


def test_a_frozen_server_holds_up_no_cycle_and_its_version_is_applied_once_it_thaws(plant: Plant) -> None:
    fleet = plant.fleet
    reconciler = Reconciler(fleet, plant.store, poll_s=0.5)
    # Tighter than production's 60 s: a cycle waits one read deadline (5 s) on a frozen server,
    # never the whole freeze (before deadlines, a 25 s SIGSTOP held a cycle 25 s).
    reconciler.heartbeat.stuck_after_s = 2 * fleet.read_deadline_s
    pid = fleet.pid(SERVER)
    assert pid is not None
    reconciler.start()
    statuses: set[str] = set()
    oldest_beat = 0.0
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            version_id, knobs = plant.propose(max_queue_delay_us=1234)
            reconciler.nudge()
            while time.monotonic() - frozen_at < 20:
                statuses.add(reconciler.heartbeat.status().split(":")[0])
                last = reconciler.heartbeat.last
                if last is not None:
                    oldest_beat = max(oldest_beat, reconciler.heartbeat.clock() - last)
                assert plant.state(version_id) == "desired"
                time.sleep(0.25)
            failed_while_frozen = temporary_failures(reconciler)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert wait_for(lambda: plant.state(version_id) != "desired", 30)
    finally:
        reconciler.stop()
    assert "stuck" not in statuses, statuses
    assert oldest_beat < fleet.read_deadline_s + 3, oldest_beat  # one read deadline, a poll, slack
    assert failed_while_frozen >= 2  # tried again, backing off, while frozen
    assert plant.state(version_id) == "applied"
    assert plant.journal(version_id) == ["applied"]  # one apply, after the thaw
    assert fleet.observed_knobs(MODEL) == knobs == fleet.knobs(MODEL)


def test_a_killed_server_is_restarted_and_the_version_is_applied_however_long_it_took(
    plant: Plant,
) -> None:
    """The supervisor's restart is held back ~18 s (the test holds the server's reconfiguration
    lock, which a restart takes), longer than the old 5 attempts (1+2+4+8 s) lasted."""
    fleet = plant.fleet
    # A short, capped backoff: many attempts while the server is down, one within 2 s of its return.
    reconciler = Reconciler(fleet, plant.store, poll_s=0.25, backoff_base_s=0.25, backoff_max_s=2.0)
    pid = fleet.pid(SERVER)
    assert pid is not None
    fleet.observed_knobs(MODEL)  # the cached channel is open
    restart = fleet._locks[SERVER]
    restart.acquire()
    try:
        os.killpg(pid, signal.SIGKILL)
        with pytest.raises(ReconfigurationError) as err:
            fleet.observed_knobs(MODEL)
        assert err.value.temporary
        assert SERVER not in fleet._readers  # UNAVAILABLE dropped the channel: the next call dials anew
        version_id, knobs = plant.propose(max_queue_delay_us=4321)
        reconciler.start()
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 18:
            assert plant.state(version_id) == "desired"
            time.sleep(0.25)
        assert fleet.restarts(SERVER) == 0
    finally:
        restart.release()
    try:
        assert wait_for(lambda: fleet.restarts(SERVER) == 1, 30)
        back_at = time.monotonic()
        assert wait_for(lambda: plant.state(version_id) != "desired", 30)
        applied_after_s = time.monotonic() - back_at
    finally:
        reconciler.stop()
    assert temporary_failures(reconciler) > 5  # past the old limit, and still going
    assert plant.state(version_id) == "applied"
    # within a capped backoff (2 s) and an apply of the restart: no wait on a stale channel
    assert applied_after_s < 8, applied_after_s
    assert plant.journal(version_id) == ["applied"]
    assert fleet.observed_knobs(MODEL) == knobs == fleet.knobs(MODEL)
