"""The tuning loop, ask/tell: ask Optuna for a candidate, pass it through the guardrails, make it
the fleet's configuration, let it warm up, measure a window, tell Optuna the SLA-scored result.

The starting configuration is measured first, as the baseline, then the space's protective
corner (latency-critical models free of rate-limiter tokens, bulk models at their fewest
instances), so the sampler starts from a configuration likely to keep the SLAs. A trial that breaks a
latency-critical SLA badly is cut short and the best known safe configuration restored at once.
The best few feasible candidates are measured again before one is declared the winner (a lucky
window must not win); the winner stays applied. Studies live in Optuna's RDB storage, so an
interrupted study resumes: a trial left running by a crash is marked failed, none told is repeated.

The loop talks to the fleet only through a `Plant` (runtime apply, store windows, the clock), so it
is the same for the live fleet and for anything else that can apply knobs and report windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from domain.proposal import Guardrails, Proposal, propose
from domain.spec import FleetSpec, Knobs
from tuner.objective import Measured, Score, breaks_badly, score
from tuner.space import knobs_from_params, params_from_knobs, protective_params, search_space

log = logging.getLogger("slatune.tuner")


class Plant(Protocol):
    """What the loop tunes."""

    def knobs(self) -> dict[str, Knobs]:
        """The knobs every model runs with now."""

    def pending(self) -> dict[str, Knobs]:
        """The knobs asked for and not applied yet (by anyone), per model that has some."""

    def apply(self, proposal: Proposal, reason: str) -> None:
        """Make an accepted proposal live: record its changes and wait until they run."""

    def measure(self, since: float) -> dict[str, Measured]:
        """Each model's measurement over the windows of its current configuration since `since`."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class TuningConfig:
    budget: int = 10
    """Configurations to measure, the baseline included."""
    warmup_s: float = 5.0
    """Seconds after applying that are not measured."""
    window_s: float = 20.0
    check_every_s: float = 5.0
    """How often a trial's partial window is checked for a badly broken SLA."""
    cut_factor: float = 2.0
    """An SLA broken by more than this many times its target cuts the trial short."""
    settle_max_s: float = 30.0
    """After a restore, how long the tuner may wait for the latency-critical models to meet their
    SLAs again (the queues a broken trial built draining) before it measures anything."""
    remeasure_top: int = 2
    """The best feasible configurations measured again before one wins (more when none of them
    holds on its second window); 0 measures none again, and the run names no winner."""
    models: tuple[str, ...] | None = None
    """Models whose knobs are searched (all by default)."""
    rails: Guardrails = field(default_factory=Guardrails)


@dataclass(frozen=True)
class Outcome:
    trial: int
    knobs: dict[str, Knobs]
    score: Score | None
    cut_short: bool = False
    refused: str | None = None
    violation_s: float = 0.0
    """Seconds this trial ran a configuration that broke an SLA (0 for a feasible one)."""
    measured: Mapping[str, Measured] = field(default_factory=dict)
    """The evidence: each model's measurement over the trial's window."""


@dataclass(frozen=True)
class TuningResult:
    baseline: Score | None
    best: dict[str, Knobs] | None
    best_score: Score | None
    """The winner's worse measurement (first window or re-measure): what it is trusted to do."""
    outcomes: list[Outcome]


def constraints_of(trial: FrozenTrial) -> list[float]:
    """A trial's SLA violations (<= 0 is met); a trial without them (failed, pruned) is not known
    to be feasible."""
    attr = trial.user_attrs.get("score")
    return score_from_attr(attr).constraints() if attr else [1.0]


def make_study(
    name: str, storage: str | optuna.storages.BaseStorage, seed: int | None = None
) -> optuna.Study:
    """A study in Optuna's own RDB storage (its own database: its Alembic table would clash with
    slatune's), created or resumed."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)  # reads trials' set_constraint
    return optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )


def score_to_attr(s: Score) -> dict[str, object]:
    return {"goodput": s.bulk_goodput, "violations": dict(s.violations), "memory_gb": s.memory_gb}


def score_from_attr(attr: Mapping[str, Any]) -> Score:
    return Score(
        float(attr["goodput"]), {k: float(v) for k, v in attr["violations"].items()}, float(attr["memory_gb"])
    )


def knobs_to_attr(knobs: Mapping[str, Knobs]) -> dict[str, dict[str, object]]:
    return {name: k.model_dump(mode="json") for name, k in knobs.items()}


def knobs_from_attr(attr: Mapping[str, Mapping[str, object]]) -> dict[str, Knobs]:
    return {name: Knobs.model_validate(k) for name, k in attr.items()}


def propose_to(
    spec: FleetSpec,
    plant: Plant,
    knobs: Mapping[str, Knobs],
    rails: Guardrails,
    last_change: Mapping[str, float] | None = None,
    *,
    known_safe: bool = False,
) -> Proposal:
    """The tuner's one call of the proposal path, for every apply: trials, restores, re-measures
    and the winner (those three are returns to a configuration measured safe)."""
    return propose(
        spec, plant.knobs(), knobs, actor="tuner", now=plant.now(), pending=plant.pending(), rails=rails,
        last_change=last_change, known_safe=known_safe,
    )  # fmt: skip


def measure_configuration(
    spec: FleetSpec,
    plant: Plant,
    proposal: Proposal,
    config: TuningConfig,
    number: int = -1,
    reason: str | None = None,
) -> Outcome:
    """Apply an accepted proposal, warm up, measure one window, checking it as it goes: a badly
    broken SLA ends it."""
    knobs = proposal.knobs
    plant.apply(proposal, reason or f"tuner trial {number}")
    applied_at = plant.now()  # until the apply returns, the previous configuration runs
    plant.sleep(config.warmup_s)
    since = plant.now()
    measured: dict[str, Measured] = {}
    cut = False
    while (elapsed := plant.now() - since) < config.window_s:
        plant.sleep(min(config.check_every_s, config.window_s - elapsed))
        measured = plant.measure(since)
        if breaks_badly(spec, measured, config.cut_factor):
            cut = True
            break
    result = score(spec, measured, knobs)
    violation_s = 0.0 if result.feasible else plant.now() - applied_at
    log.info(
        "trial %d: goodput %.1f/s, feasible %s%s", number, result.bulk_goodput, result.feasible,
        " (cut short)" if cut else "",
    )  # fmt: skip
    return Outcome(number, dict(knobs), result, cut_short=cut, violation_s=violation_s, measured=measured)


class Tuner:
    def __init__(
        self,
        spec: FleetSpec,
        plant: Plant,
        study: optuna.Study,
        config: TuningConfig,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.spec = spec
        self.plant = plant
        self.study = study
        self.config = config
        self.on_outcome = on_outcome or (lambda _: None)
        self.dims = search_space(spec, config.models)
        self.distributions: dict[str, BaseDistribution] = {
            d.name: IntDistribution(d.low, d.high) for d in self.dims
        }
        self._last_change: dict[str, float] = {}

    # ------------------------------------------------------------------ the loop
    def run(self) -> TuningResult:
        self._fail_interrupted()
        outcomes: list[Outcome] = []
        if not self.study.trials:
            start = params_from_knobs(self.dims, self.plant.knobs())
            self.study.enqueue_trial(start, user_attrs={"baseline": True})
            protective = protective_params(self.spec, self.dims, start)
            if protective != start:
                self.study.enqueue_trial(protective, user_attrs={"protective": True})
        asked = 0
        while self._measured() < self.config.budget and asked < 3 * self.config.budget:
            asked += 1
            trial = self.study.ask(self.distributions)
            candidate = knobs_from_params(self.plant.knobs(), trial.params)
            proposal = self._propose(candidate)
            if not proposal.accepted:
                trial.set_user_attr("refused", proposal.refused)
                self.study.tell(trial, state=TrialState.PRUNED)
                outcome = Outcome(trial.number, proposal.knobs, None, refused=proposal.refused)
            else:
                outcome = self._measure(trial.number, proposal)
                assert outcome.score is not None
                for model, value in sorted(outcome.score.violations.items()):
                    trial.set_constraint(f"sla:{model}", value)  # what the constrained sampler uses
                trial.set_user_attr("score", score_to_attr(outcome.score))
                trial.set_user_attr("knobs", knobs_to_attr(proposal.knobs))
                trial.set_user_attr("cut_short", outcome.cut_short)
                trial.set_user_attr("violation_s", outcome.violation_s)
                self.study.tell(trial, outcome.score.objective)
                if not outcome.score.feasible:
                    self._restore_safe()
            outcomes.append(outcome)
            self.on_outcome(outcome)
        best, best_score = self._remeasure_best(outcomes)
        if best is not None:
            self._apply_safe(best, "tuner: the best feasible configuration, re-measured")
        baseline = next((o.score for o in outcomes if o.trial == 0), None)
        return TuningResult(baseline, best, best_score, outcomes)

    def _propose(self, knobs: Mapping[str, Knobs], *, known_safe: bool = False) -> Proposal:
        return propose_to(
            self.spec, self.plant, knobs, self.config.rails, self._last_change, known_safe=known_safe
        )

    def _apply_safe(self, knobs: Mapping[str, Knobs], reason: str) -> bool:
        """Back to a configuration measured safe, through the proposal path like any other apply;
        False (and nothing applied) if it refuses, e.g. when the spec changed since."""
        proposal = self._propose(knobs, known_safe=True)
        if not proposal.accepted:
            log.error("%s: refused: %s", reason, proposal.refused)
            return False
        self._note_changes(proposal)
        self.plant.apply(proposal, reason)
        return True

    def _note_changes(self, proposal: Proposal) -> None:
        """Start each changing model's cooldown."""
        for name in proposal.changes:
            self._last_change[name] = self.plant.now()

    def _measure(self, number: int, proposal: Proposal, reason: str | None = None) -> Outcome:
        self._note_changes(proposal)
        return measure_configuration(self.spec, self.plant, proposal, self.config, number, reason)

    def _restore_safe(self) -> None:
        """Back to the best feasible configuration measured so far, then settled: the queues the
        broken trial built drain before the next measurement, which would be charged with them."""
        if self.apply_best_so_far("tuner: restore the best safe configuration") is not None:
            self._settle()

    def _settle(self) -> None:
        """Wait, at most `settle_max_s`, until every latency-critical model meets its SLA over the
        last `check_every_s` again."""
        began = self.plant.now()
        while (waited := self.plant.now() - began) < self.config.settle_max_s:
            self.plant.sleep(min(self.config.check_every_s, self.config.settle_max_s - waited))
            recent = self.plant.measure(self.plant.now() - self.config.check_every_s)
            if score(self.spec, recent, self.plant.knobs()).feasible:
                log.info("settled %.0f s after the restore", self.plant.now() - began)
                return
        log.warning("not settled %.0f s after the restore; measuring on", self.config.settle_max_s)

    def apply_best_so_far(
        self, reason: str = "tuner: stopped; the best feasible configuration so far"
    ) -> dict[str, Knobs] | None:
        """Apply the best feasible configuration the study has measured (on a stop, or after a
        broken trial); None, and nothing applied, when none was feasible."""
        safe = self._best_feasible(1)
        if not safe:
            return None
        knobs = knobs_from_attr(safe[0].user_attrs["knobs"])
        return knobs if self._apply_safe(knobs, reason) else None

    def _remeasure_best(self, outcomes: list[Outcome]) -> tuple[dict[str, Knobs] | None, Score | None]:
        """Measure the best few feasible configurations again; each keeps its worse measurement
        (lower goodput, larger violations). The best that stays feasible wins. When none of the
        top `remeasure_top` stays feasible (a window at the edge, a busier host), the next ones are
        measured in turn until one does: a run that measured a safe configuration ends on one that
        held twice, not on none."""
        best: tuple[dict[str, Knobs], Score] | None = None
        ranked = self._best_feasible(len(self.study.trials)) if self.config.remeasure_top > 0 else []
        for rank, trial in enumerate(ranked):
            if rank >= self.config.remeasure_top and best is not None:
                break
            knobs = knobs_from_attr(trial.user_attrs["knobs"])
            proposal = self._propose(knobs, known_safe=True)
            if not proposal.accepted:
                log.error("re-measure of trial %d refused: %s", trial.number, proposal.refused)
                continue
            again = self._measure(trial.number, proposal, f"tuner: re-measure trial {trial.number}").score
            assert again is not None
            first = score_from_attr(trial.user_attrs["score"])
            worse = Score(
                min(first.bulk_goodput, again.bulk_goodput),
                {k: max(first.violations[k], again.violations[k]) for k in again.violations},
                again.memory_gb,
            )
            self.study.set_user_attr(f"remeasured_trial_{trial.number}", score_to_attr(again))
            if worse.feasible and (best is None or worse.objective > best[1].objective):
                best = (knobs, worse)
        return best if best is not None else (None, None)

    # ------------------------------------------------------------------ study state
    def _measured(self) -> int:
        return sum(t.state == TrialState.COMPLETE for t in self.study.trials)

    def _best_feasible(self, n: int) -> list[FrozenTrial]:
        return best_feasible(self.study.trials, n)

    def _fail_interrupted(self) -> None:
        fail_interrupted(self.study)


def best_feasible(trials: Sequence[FrozenTrial], n: int) -> list[FrozenTrial]:
    """The `n` best measured trials that kept every SLA, best first."""
    done = [
        t for t in trials
        if t.state == TrialState.COMPLETE and "knobs" in t.user_attrs and all(c <= 0 for c in constraints_of(t))
    ]  # fmt: skip
    return sorted(done, key=lambda t: t.value or 0.0, reverse=True)[:n]


def fail_interrupted(study: optuna.Study) -> None:
    """A trial still RUNNING belongs to a run that died: it is failed, never told twice."""
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            log.warning("trial %d was interrupted; marked failed", t.number)
            study.tell(t.number, state=TrialState.FAIL)
