"""The tuner on the real fleet: a study that starts from a configuration breaking the guard's SLA
ends with one that meets every SLA, applied and recorded; an interrupted study resumes from its storage
without losing or repeating a told trial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from controlplane import startup
from controlplane.settings import Settings
from domain.proposal import Guardrails
from domain.spec import embedded_spec_path, load_spec
from runtime.fleet import Fleet
from runtime.load import LoadRun, demo_mix, targets_for
from store import queries
from store.db import Store
from store.models import TuningRun
from tuner.live import LivePlant, run_study
from tuner.loop import Tuner, TuningConfig, make_study

pytestmark = pytest.mark.integration


def tuning_spec(tmp_path: Path) -> Path:
    """The default fleet starting where the rate limiter makes the latency-critical models wait
    behind bulk work: the guard takes a compute token and chat both, and the limiter serves its
    queue head-first. The search is narrowed to the knobs that matter here, so that a short study
    can succeed: the tokens chat and the guard take, the bulk instance counts and the bulk compute
    priority.

    The SLA this test is about is the guard's, at 150 ms: the start holds its p99 at 0.7-1.9 s.
    The guard runs two instances: with one, a request that arrives while it is busy waits for the
    next arrival or Triton's 500 ms batcher re-check (docs/triton.md), which now and then put a
    single 8 s window of the protective corner at 440 ms and failed the study in CI. Chat's SLA is
    relaxed to 1.5 s: the test judges the tuner, not how close this 2-core host runs to 200 ms."""
    data: dict[str, Any] = yaml.safe_load(embedded_spec_path("default").read_text())
    for m in data["models"]:
        m["bounds"] = {}
        if m["name"] == "chat-llm":
            m["knobs"]["resources"] = {"compute": 2}
            m["bounds"] = {"resources": {"compute": [0, 2]}}
        elif m["name"] == "safety-guard":
            m["knobs"]["instances"] = 2
            m["bounds"] = {"resources": {"compute": [0, 1]}}
        else:
            m["bounds"] = {
                "instances": [1, 2],
                "resources": {"compute": [1, 1]},
                "compute_priority": ["default", "min"],
            }
        if m["name"] == "safety-guard":
            m["sla"]["target_ms"] = 150
        if m["name"] == "chat-llm":
            m["sla"]["target_ms"] = 1500
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Fleet, Store, LivePlant]]:
    """The tuning spec brought up as `slatune up` does (store, fleet, collectors, reconciler),
    under the demo's mixed traffic."""
    settings = Settings(data_dir=tmp_path, scrape_interval_s=0.5)  # type: ignore[call-arg]
    with startup.running(settings, load_spec(tuning_spec(tmp_path)), resume=False) as system:
        fleet = system.fleet
        load = LoadRun(
            demo_mix(), targets_for(fleet.spec, lambda s: fleet.endpoints(s).grpc), duration_s=280, seed=7
        ).start()
        try:
            yield fleet, system.store, LivePlant(system.plane.reconciler, system.store)
        finally:
            load.stop()
            load.join()


CONFIG = TuningConfig(  # the baseline, the protective corner the study tries second, one sampled
    budget=3, warmup_s=3, window_s=8, check_every_s=4, remeasure_top=1, rails=Guardrails(cooldown_s=0)
)


def test_a_short_study_starting_broken_ends_meeting_every_sla(
    live: tuple[Fleet, Store, LivePlant], tmp_path: Path
) -> None:
    fleet, store, plant = live
    result = run_study(
        plant.reconciler, store, CONFIG, "chat-sla", f"sqlite:///{tmp_path / 'optuna.db'}", seed=3
    )
    assert result.baseline is not None and result.baseline.violations["safety-guard"] > 0  # it starts broken
    trials = [(o.trial, o.cut_short, o.score and o.score.violations) for o in result.outcomes]
    assert result.best is not None and result.best_score is not None and result.best_score.feasible, trials
    assert fleet.all_knobs() == result.best  # the winner stays applied
    with store.session() as session:
        versions = queries.applied_versions(session)
        recorded = session.get(queries.ConfigVersion, versions["chat-llm"].id)
        assert recorded is not None and recorded.knobs == result.best["chat-llm"].model_dump(mode="json")
        assert recorded.actor in ("tuner", "startup")
        (run,) = session.query(TuningRun).all()
        assert run.status == "completed" and run.best is not None
        assert run.best["knobs"] == {n: k.model_dump(mode="json") for n, k in result.best.items()}
        assert run.best["measured"] and run.best["score"]["goodput"] > 0  # the evidence
    broken = [o for o in result.outcomes if o.score is not None and not o.score.feasible]
    assert all(0 < o.violation_s <= CONFIG.warmup_s + CONFIG.window_s + 5 for o in broken), [
        o.violation_s for o in broken
    ]  # bounded


def test_an_interrupted_study_resumes_without_losing_or_repeating_a_trial(
    live: tuple[Fleet, Store, LivePlant], tmp_path: Path
) -> None:
    fleet, _, plant = live
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    class Crash(Exception):
        pass

    class CrashingPlant:  # the live plant, until the process "dies" in the third trial's window
        last_reason = ""

        def __getattr__(self, name: str) -> Any:
            return getattr(plant, name)

        def apply(self, knobs: Any, reason: str) -> None:
            self.last_reason = reason
            plant.apply(knobs, reason)

        def measure(self, since: float) -> Any:
            if self.last_reason == "tuner trial 2":
                raise Crash
            return plant.measure(since)

    config = TuningConfig(
        budget=3, warmup_s=1, window_s=4, check_every_s=2, remeasure_top=0, rails=Guardrails()
    )
    with pytest.raises(Crash):
        Tuner(fleet.spec, CrashingPlant(), make_study("resume", storage, seed=5), config).run()  # type: ignore[arg-type]
    before = optuna.load_study(study_name="resume", storage=storage).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    Tuner(fleet.spec, plant, make_study("resume", storage, seed=5), config).run()
    after = optuna.load_study(study_name="resume", storage=storage).trials
    assert [t.state for t in after[:3]] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [(t.params, t.value) for t in after[:2]] == [
        (t.params, t.value) for t in before[:2]
    ]  # kept, not re-run
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3  # the budget, none lost or repeated
    assert after[0].user_attrs.get("baseline") is True
