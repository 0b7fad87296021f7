"""The running fleet as the tuner sees it. A candidate becomes desired configuration versions in
the store (actor "tuner"); the reconciler applies them through the runtime, and the tuner waits
until they run. It is measured from the store's windows of the version in force. The collector
must be running: it is what turns traffic into windows."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import optuna

from domain.health import Heartbeat
from domain.proposal import Proposal
from domain.spec import FleetSpec, Knobs
from domain.windows import aggregate
from runtime.fleet import Fleet, ReconfigurationError
from store import configs, queries, tuning
from store.db import Store, StoreUnavailable
from store.models import TuningRun
from tuner.loop import Outcome, Tuner, TuningConfig, TuningResult, knobs_to_attr, make_study, score_to_attr
from tuner.objective import Measured


class TuningStopped(Exception):
    """The run was asked to stop (the best feasible configuration so far is applied)."""


class RunNotResumable(Exception):
    """Only an interrupted or stopped run can be resumed."""

    def __init__(self, run_id: int, status: str | None) -> None:
        what = "does not exist" if status is None else f"is {status}"
        super().__init__(f"tuning run {run_id} {what}: only an interrupted or stopped run can be resumed")
        self.run_id, self.status = run_id, status


class Reconciles(Protocol):
    """What the plant needs of the control plane's reconciler."""

    fleet: Fleet

    def converge(self, version_ids: Iterable[int], timeout_s: float = ...) -> dict[int, str]: ...


STORE_RETRY_S = 2.0
T = TypeVar("T")
log = logging.getLogger("slatune.tuner")


class LivePlant:
    def __init__(
        self,
        reconciler: Reconciles,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        apply_timeout_s: float = 120.0,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.heartbeat = heartbeat or Heartbeat("tuner", stuck_after_s=apply_timeout_s + 60.0)
        self.fleet = reconciler.fleet
        self.store = store
        self._clock = clock
        self._stop = stop or threading.Event()
        self.apply_timeout_s = apply_timeout_s

    def knobs(self) -> dict[str, Knobs]:
        return self.fleet.all_knobs()

    def pending(self) -> dict[str, Knobs]:
        with self.store.session() as session:
            return configs.pending_knobs(session)

    def apply(self, proposal: Proposal, reason: str) -> None:
        """Record the proposal's changes and wait until the reconciler has applied them."""

        def record() -> dict[int, str]:
            with self.store.session() as session:
                return {
                    v.id: name for name, v in configs.record(session, proposal, reason, self._clock()).items()
                }

        ids = self._through_outages(record)
        if not ids:
            self.heartbeat.beat()
            return
        states = self._through_outages(lambda: self.reconciler.converge(ids, self.apply_timeout_s))
        self.heartbeat.beat()
        unapplied = {i: s for i, s in states.items() if s != "applied"}
        if unapplied:
            with self.store.session() as session:
                why = [
                    f"{ids[i]} version {i}: {s}"
                    + (f" ({v.error})" if (v := configs.version(session, ids[i], i)) and v.error else "")
                    for i, s in unapplied.items()
                ]
            raise ReconfigurationError(f"tuner: {reason}: not applied: {'; '.join(why)}")

    def _through_outages(self, call: Callable[[], T]) -> T:
        """`call`, again every few seconds while the store does not answer (the heartbeat says so):
        a store outage pauses a run, it does not end it. A stop ends the wait."""
        while True:
            try:
                return call()
            except StoreUnavailable as exc:
                self.heartbeat.beat(f"the store does not answer: {exc}")
                log.warning("tuner: the store does not answer; trying again in %.0f s", STORE_RETRY_S)
                self.sleep(STORE_RETRY_S)

    def measure(self, since: float) -> dict[str, Measured]:
        """Windows that began at or after `since` and belong to each model's version in force (read
        again while the store does not answer: the collector writes the windows it kept meanwhile)."""
        out = self._through_outages(lambda: self._measure(since))
        self.heartbeat.beat()
        return out

    def _measure(self, since: float) -> dict[str, Measured]:
        out = {}
        with self.store.session() as session:
            versions = queries.applied_versions(session)
            for m in self.fleet.spec.models:
                version = versions.get(m.name)
                rows = queries.windows(
                    session, m.name, start=since, config_version=version.id if version else None
                )
                agg = aggregate([r for r in rows if r.start >= since])
                out[m.name] = Measured(
                    requests=agg.requests,
                    failures=sum(agg.failures.values()),
                    items_per_s=agg.inference_rate,
                    p99_ms=agg.p99_ms,
                    ttft_p99_ms=agg.ttft_p99_ms,
                )
        return out

    def now(self) -> float:
        return self._clock()

    def sleep(self, seconds: float) -> None:
        """Wait, unless the run is asked to stop: then raise TuningStopped."""
        if self._stop.wait(seconds):
            raise TuningStopped()


def run_study(
    reconciler: Reconciles,
    store: Store,
    config: TuningConfig,
    study_name: str,
    optuna_storage: str,
    *,
    seed: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
    spec: FleetSpec | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    owner: str | None = None,
    resume: int | None = None,
    heartbeat: Heartbeat | None = None,
) -> TuningResult:
    """A tuning run on the live fleet, recorded in the store with its study and, at the end or on
    a stop, the winning configuration and its evidence (both measurements of it). Setting `stop`
    (or Ctrl-C) ends it after applying the best feasible configuration measured so far, which is
    then the result's `best`. `on_start` is told the run's id. `spec` is the fleet's own unless
    given (with the SLAs an operator set since, say). `storage` is `optuna_storage` already opened
    (a process opens Optuna's storage once: two first openings race to create its tables). `owner`
    names the process running it (`controlplane.tuning.Owner`). `resume` is the id of an
    interrupted or stopped run to continue, its study named `study_name`: claimed, it is `running`
    again under `owner` (RunNotResumable when it is not resumable)."""
    fleet = reconciler.fleet
    now = time.time()
    with store.session() as session:
        if resume is not None:
            if not tuning.claim(session, resume, owner or "", now):
                current = tuning.run(session, resume)
                raise RunNotResumable(resume, current.status if current else None)
            run_id = resume
        else:
            row = TuningRun(
                study_name=study_name, optuna_storage=optuna_storage, status="running", started_at=now,
                budget=config.budget, window_s=config.window_s, warmup_s=config.warmup_s,
                models=list(config.models or fleet.spec.model_names), owner=owner, owned_since=now,
                heartbeat_at=now,
            )  # fmt: skip
            session.add(row)
            session.flush()
            run_id = row.id
    if on_start is not None:
        on_start(run_id)
    status, result = "failed", None
    plant = LivePlant(reconciler, store, stop=stop, heartbeat=heartbeat)
    tuner: Tuner | None = None
    try:
        study = make_study(study_name, storage or optuna_storage, seed)
        tuner = Tuner(spec or fleet.spec, plant, study, config, on_outcome)
        result = tuner.run()
        status = "completed"
        return result
    except (KeyboardInterrupt, TuningStopped) as exc:
        status = "stopped"
        result = TuningResult(None, tuner.apply_best_so_far() if tuner else None, None, [])
        if isinstance(exc, KeyboardInterrupt):
            raise
        return result
    finally:
        with store.session() as session:
            done = session.get(TuningRun, run_id)
            assert done is not None
            done.status, done.ended_at = status, time.time()
            if result is not None and result.best is not None:
                evidence = [o for o in result.outcomes if o.score is not None and o.knobs == result.best]
                done.best = {
                    "knobs": knobs_to_attr(result.best),
                    "score": score_to_attr(result.best_score) if result.best_score else None,
                    "trials": [o.trial for o in evidence],
                    "measured": [{m: vars(v) for m, v in o.measured.items()} for o in evidence],
                }
