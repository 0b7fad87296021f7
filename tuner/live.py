"""The running fleet as the tuner sees it: knobs made live through the runtime and recorded in the
store as configuration versions (actor "tuner"), measured from the store's windows of the version
in force. The collector must be running: it is what turns traffic into windows."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from runtime.fleet import Fleet
from runtime.spec import Knobs
from store import queries
from store.db import Store
from store.models import TuningRun
from tuner.loop import Outcome, Tuner, TuningConfig, TuningResult, knobs_to_attr, make_study, score_to_attr
from tuner.objective import Measured


class LivePlant:
    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        *,
        actor: str = "tuner",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.actor = actor
        self._clock = clock
        self._sleep = sleep

    def knobs(self) -> dict[str, Knobs]:
        return self.fleet.all_knobs()

    def apply(self, knobs: Mapping[str, Knobs], reason: str) -> None:
        current = self.fleet.all_knobs()
        for name, k in knobs.items():
            if current[name] != k:
                self.fleet.apply(name, k)
                with self.store.session() as session:
                    queries.record_applied(session, name, k.model_dump(), self.actor, reason, self._clock())

    def measure(self, since: float) -> dict[str, Measured]:
        """Windows that began at or after `since` and belong to each model's version in force."""
        out = {}
        with self.store.session() as session:
            versions = queries.applied_versions(session)
            for m in self.fleet.spec.models:
                version = versions.get(m.name)
                rows = queries.windows(
                    session, m.name, start=since, config_version=version.id if version else None
                )
                agg = queries.aggregate([r for r in rows if r.start >= since])
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
        self._sleep(seconds)


def run_study(
    fleet: Fleet,
    store: Store,
    config: TuningConfig,
    study_name: str,
    optuna_storage: str,
    *,
    seed: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> TuningResult:
    """A tuning run on the live fleet, recorded in the store with its study and, at the end or on
    a stop, the winning configuration and its evidence (both measurements of it)."""
    with store.session() as session:
        row = TuningRun(
            study_name=study_name, optuna_storage=optuna_storage, status="running", started_at=time.time(),
            budget=config.budget, window_s=config.window_s, models=list(config.models or fleet.spec.model_names),
        )  # fmt: skip
        session.add(row)
        session.flush()
        run_id = row.id
    status, result = "failed", None
    tuner = Tuner(
        fleet.spec, LivePlant(fleet, store), make_study(study_name, optuna_storage, seed), config, on_outcome
    )
    try:
        result = tuner.run()
        status = "completed"
        return result
    except KeyboardInterrupt:
        status = "stopped"
        best = tuner.apply_best_so_far()
        if best is not None:
            result = TuningResult(None, best, None, [])
        raise
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
