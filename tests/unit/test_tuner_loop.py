"""The tuning loop (`Tuner.run`) against a fake plant, exactly and instantly: the knobs it runs
decide, by a small fixed rule, what a window measures, and its clock moves only when the loop
sleeps. The tests look at what the plant saw (what was applied, in what order, what each window
measured) and at what the run returned, not at how the loop guards a proposal.

The fleet is the default one narrowed to four knobs, on a 65 GB device:

    chat TTFT p99   = 60 ms x (embeddings + reranker instances) + 100 ms x chat's compute tokens
    guard p99       =  3 ms x (embeddings + reranker instances) +   5 ms x the guard's tokens
    bulk goodput    = 100/s x embeddings instances + 20/s x reranker instances
    memory          = 42 (chat) + 2 x embeddings + 6 x reranker + 1 (guard) GB

Chat's SLA is 200 ms (cut short above 400), the guard's 20 ms: feasible means no chat token and
at most 3 bulk instances, and the best of those is 2 embeddings and 1 reranker (220/s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from domain.proposal import Guardrails, Proposal
from domain.spec import FleetSpec, Knobs, embedded_spec_path, memory_problems, parse_spec
from tuner.loop import Tuner, TuningConfig, TuningResult, make_study
from tuner.objective import Measured, score

optuna.logging.set_verbosity(optuna.logging.WARNING)


def narrowed_spec() -> FleetSpec:
    data: dict[str, Any] = yaml.safe_load(embedded_spec_path("default").read_text())
    data["devices"][0]["memory_gb"] = 65
    searched = {
        "chat-llm": {"resources": {"compute": [0, 2]}},
        "safety-guard": {"resources": {"compute": [0, 1]}},
        "embeddings": {"instances": [1, 6]},
        "reranker": {"instances": [1, 4]},
    }
    for m in data["models"]:
        m["bounds"] = searched[m["name"]]
    return parse_spec(data)


SPEC = narrowed_spec()
GUARD_TARGET_MS = SPEC.model("safety-guard").sla.target_ms  # type: ignore[union-attr]
START = {m.name: m.knobs for m in SPEC.models}  # 2 embeddings, 2 rerankers, 1 token each: 59 GB
CONFIG = TuningConfig(
    budget=4, warmup_s=2, window_s=10, check_every_s=5, cut_factor=2, remeasure_top=1, rails=Guardrails()
)


def fleet(*, chat: int = 0, guard: int = 0, emb: int = 1, rer: int = 1) -> dict[str, Knobs]:
    """The default fleet with chat's and the guard's compute tokens and the bulk instance counts."""
    return {
        **START,
        "chat-llm": START["chat-llm"].model_copy(update={"resources": {"compute": chat} if chat else {}}),
        "safety-guard": START["safety-guard"].model_copy(update={"resources": {"compute": guard} if guard else {}}),
        "embeddings": START["embeddings"].model_copy(update={"instances": emb}),
        "reranker": START["reranker"].model_copy(update={"instances": rer}),
    }  # fmt: skip


def params(*, chat: int = 0, guard: int = 0, emb: int = 1, rer: int = 1) -> dict[str, int]:
    return {
        "chat-llm.resources.compute": chat,
        "safety-guard.resources.compute": guard,
        "embeddings.instances": emb,
        "reranker.instances": rer,
    }


PROTECTIVE = fleet()  # no token for chat or the guard, one instance of each bulk model: 51 GB


@dataclass(frozen=True)
class Figures:
    chat_ttft_ms: float
    guard_p99_ms: float
    embeddings_per_s: float
    reranker_per_s: float


def rule(knobs: Mapping[str, Knobs]) -> Figures:
    bulk = knobs["embeddings"].instances + knobs["reranker"].instances
    return Figures(
        chat_ttft_ms=60.0 * bulk + 100.0 * knobs["chat-llm"].resources.get("compute", 0),
        guard_p99_ms=3.0 * bulk + 5.0 * knobs["safety-guard"].resources.get("compute", 0),
        embeddings_per_s=100.0 * knobs["embeddings"].instances,
        reranker_per_s=20.0 * knobs["reranker"].instances,
    )


def measured_by(f: Figures, seconds: float) -> dict[str, Measured]:
    """A window of `seconds` with these figures: chat at 3 requests/s, the guard at 15/s, bulk
    requests of 8 items."""
    return {
        "chat-llm": Measured(3 * seconds, 0, 3.0, p99_ms=2 * f.chat_ttft_ms, ttft_p99_ms=f.chat_ttft_ms),
        "safety-guard": Measured(15 * seconds, 0, 15.0, p99_ms=f.guard_p99_ms),
        "embeddings": Measured(f.embeddings_per_s * seconds / 8, 0, f.embeddings_per_s),
        "reranker": Measured(f.reranker_per_s * seconds / 8, 0, f.reranker_per_s),
    }


def key(knobs: Mapping[str, Knobs]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, k.model_dump_json()) for name, k in knobs.items()))


@dataclass(frozen=True)
class Applied:
    at: float
    knobs: dict[str, Knobs]
    """What runs after the apply."""
    reason: str


@dataclass
class Window:
    knobs: dict[str, Knobs]
    since: float
    end: float
    nth: int
    """Which window of this configuration it is (0 for its first)."""


class Crash(Exception):
    """The process "dies"."""


@dataclass
class FakePlant:
    """Applies at once; a window measures `figures(knobs running, nth window of them)`."""

    current: dict[str, Knobs]
    figures: Callable[[Mapping[str, Knobs], int], Figures] = lambda knobs, nth: rule(knobs)
    crash_in_window: int | None = None
    """Raise Crash when this window (counting from 1) is measured."""
    clock: float = 1000.0
    applies: list[Applied] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    settle_reads: list[tuple[float, float]] = field(default_factory=list)
    """(since, at) of each read the tuner makes after a restore, to see that it settled."""
    draining_s: float = 0.0
    """After a restore, reads over spans that start sooner than this still see the broken trial's
    queues (the guard at 5x its target)."""

    def knobs(self) -> dict[str, Knobs]:
        return dict(self.current)

    def pending(self) -> dict[str, Knobs]:
        return {}  # every apply is done when it returns

    def apply(self, proposal: Proposal, reason: str) -> None:
        self.current = {**self.current, **proposal.changes}
        self.applies.append(Applied(self.clock, dict(self.current), reason))

    def measure(self, since: float) -> dict[str, Measured]:
        if self.applies and "restore" in self.applies[-1].reason:  # settling, not a window
            self.settle_reads.append((since, self.clock))
            f = rule(self.current)
            if since < self.applies[-1].at + self.draining_s:
                f = Figures(f.chat_ttft_ms, 5 * GUARD_TARGET_MS, f.embeddings_per_s, f.reranker_per_s)
            return measured_by(f, self.clock - since)
        if not self.windows or self.windows[-1].since != since:
            nth = sum(key(w.knobs) == key(self.current) for w in self.windows)
            self.windows.append(Window(dict(self.current), since, since, nth))
            if len(self.windows) == self.crash_in_window:
                raise Crash
        window = self.windows[-1]
        assert key(window.knobs) == key(self.current), "the configuration changed inside a window"
        window.end = self.clock
        return measured_by(self.figures(self.current, window.nth), self.clock - since)

    def now(self) -> float:
        return self.clock

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def measured(self, knobs: Mapping[str, Knobs]) -> list[Window]:
        return [w for w in self.windows if key(w.knobs) == key(knobs)]


class Scripted(optuna.samplers.BaseSampler):
    """Proposes the candidate the test gives for each trial number (the baseline and the
    protective corner come from the study's queue, not from here)."""

    def __init__(self, script: Mapping[int, Mapping[str, int]]) -> None:
        self.script = script

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        assert trial.number in self.script, f"the test scripts no candidate for trial {trial.number}"
        return self.script[trial.number][param_name]


def scripted(script: Mapping[int, Mapping[str, int]]) -> optuna.Study:
    return optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), sampler=Scripted(script), direction="maximize"
    )


def run(plant: FakePlant, study: optuna.Study, config: TuningConfig = CONFIG) -> TuningResult:
    return Tuner(SPEC, plant, study, config).run()


def test_the_baseline_is_measured_first_then_the_protective_corner() -> None:
    plant = FakePlant(dict(START))
    result = run(plant, make_study("first", optuna.storages.InMemoryStorage(), seed=1))
    assert [key(w.knobs) for w in plant.windows[:2]] == [key(START), key(PROTECTIVE)]
    assert [(o.trial, key(o.knobs)) for o in result.outcomes[:2]] == [(0, key(START)), (1, key(PROTECTIVE))]
    # the baseline: 4 bulk instances and a chat token: chat 60x4 + 100 = 340 ms, 70% over its
    # 200 ms; the guard 3x4 + 5 = 17 ms, 15% under its 20 ms; 200 + 40 items/s
    assert result.baseline is not None and result.baseline == result.outcomes[0].score
    assert result.baseline.violations == {
        "chat-llm": pytest.approx(0.7),
        "safety-guard": pytest.approx(-0.15),
    }
    assert result.baseline.bulk_goodput == pytest.approx(240.0)
    assert not result.outcomes[0].cut_short  # 340 ms is less than twice 200 ms: a whole window
    assert plant.windows[0].end - plant.windows[0].since == CONFIG.window_s


def test_a_badly_broken_trial_is_cut_short_and_the_best_safe_configuration_restored_at_once() -> None:
    broken = fleet(chat=2, emb=3, rer=1)  # chat 60x4 + 200 = 440 ms > 2 x 200 ms; 55 GB
    good = fleet(emb=2, rer=1)  # chat 180 ms, the guard 9 ms: feasible, 220/s
    plant = FakePlant(dict(START))
    result = run(plant, scripted({2: params(chat=2, emb=3, rer=1), 3: params(emb=2, rer=1)}))

    (cut,) = [o for o in result.outcomes if o.cut_short]
    assert (cut.trial, key(cut.knobs)) == (2, key(broken))
    (window,) = plant.measured(broken)
    assert window.end - window.since == CONFIG.check_every_s < CONFIG.window_s  # at the first check
    assert cut.violation_s == CONFIG.warmup_s + CONFIG.check_every_s  # from its apply to the cut

    at = next(i for i, a in enumerate(plant.applies) if key(a.knobs) == key(broken))
    restore = plant.applies[at + 1]
    assert key(restore.knobs) == key(PROTECTIVE)  # the only feasible configuration measured so far
    assert "restore" in restore.reason
    assert restore.at == window.end  # right after the cut, no warmup or wait first
    # it settles (one check: nothing drains in this plant) before the search goes on
    assert plant.settle_reads == [(restore.at, restore.at + CONFIG.check_every_s)]
    assert key(plant.windows[3].knobs) == key(good)
    # the baseline broke chat too, but by less than the cut factor, and nothing feasible was known
    # yet: it ran its whole window and nothing was restored after it
    assert not result.outcomes[0].cut_short
    assert key(plant.applies[1].knobs) == key(PROTECTIVE) and "restore" not in plant.applies[1].reason


def test_after_a_restore_nothing_is_measured_until_the_queues_have_drained() -> None:
    # The broken trial's backlog shows in any span that starts within 8 s of the restore: the
    # tuner checks every 5 s (spans 0-5 and 5-10 see it; 10-15 meets every SLA), then goes on.
    plant = FakePlant(dict(START), draining_s=8.0)
    run(plant, scripted({2: params(chat=2, emb=3, rer=1), 3: params(emb=2, rer=1)}))
    restore = next(a for a in plant.applies if "restore" in a.reason)
    assert [at - restore.at for _, at in plant.settle_reads] == [5.0, 10.0, 15.0]
    good = plant.measured(fleet(emb=2, rer=1))[0]
    assert good.since == restore.at + 15.0 + CONFIG.warmup_s  # the next trial: after it settled


def test_the_winner_keeps_its_worse_measurement() -> None:
    best, second = fleet(emb=2, rer=1), fleet(emb=1, rer=2)  # 220/s and 140/s, both feasible

    def noisy(knobs: Mapping[str, Knobs], nth: int) -> Figures:
        f = rule(knobs)
        if key(knobs) == key(best) and nth == 1:  # its re-measure: 20/s less, but chat 10 ms faster
            return Figures(f.chat_ttft_ms - 10, f.guard_p99_ms, f.embeddings_per_s - 20, f.reranker_per_s)
        return f

    plant = FakePlant(dict(START), noisy)
    config = replace(CONFIG, remeasure_top=2)
    result = run(plant, scripted({2: params(emb=2, rer=1), 3: params(emb=1, rer=2)}), config)
    # the two best feasible are measured again, the rest once
    assert [len(plant.measured(k)) for k in (best, second, PROTECTIVE, START)] == [2, 2, 1, 1]
    assert result.best == best
    assert result.best_score is not None
    # the worse of each figure of (220/s, chat 180 ms) and (200/s, chat 170 ms): 200/s, and chat
    # (180 - 200) / 200 = -0.1
    assert result.best_score.bulk_goodput == pytest.approx(200.0)
    assert result.best_score.violations["chat-llm"] == pytest.approx(-0.1)
    assert result.best_score.violations["safety-guard"] == pytest.approx((9 - 20) / 20)


def test_a_configuration_lucky_once_that_breaks_on_the_re_measure_does_not_win() -> None:
    lucky, honest = fleet(emb=3, rer=1), fleet(emb=2, rer=1)  # 320/s and 220/s

    def luck(knobs: Mapping[str, Knobs], nth: int) -> Figures:
        f = rule(knobs)  # lucky: chat 60x4 = 240 ms, over its SLA (but not cut short)
        return Figures(150.0, f.guard_p99_ms, f.embeddings_per_s, f.reranker_per_s) if (
            key(knobs) == key(lucky) and nth == 0
        ) else f  # fmt: skip

    plant = FakePlant(dict(START), luck)
    config = replace(CONFIG, remeasure_top=2)
    result = run(plant, scripted({2: params(emb=3, rer=1), 3: params(emb=2, rer=1)}), config)
    lucky_first = next(o for o in result.outcomes if key(o.knobs) == key(lucky))
    assert lucky_first.score is not None and lucky_first.score.feasible  # the lucky window
    assert len(plant.measured(lucky)) == 2  # it was among the best, so measured again: 240 ms
    assert result.best == honest
    assert result.best_score is not None and result.best_score.bulk_goodput == pytest.approx(220.0)
    assert plant.current == honest


def test_when_the_best_breaks_on_its_re_measure_the_next_feasible_is_measured_until_one_holds() -> None:
    """remeasure_top=1 and the best feasible configuration breaks on its second window (a busier
    host): the run does not end without a winner while another configuration measured safe; the
    next one is measured again, holds, and wins."""
    lucky, honest = fleet(emb=3, rer=1), fleet(emb=2, rer=1)  # 320/s and 220/s

    def luck(knobs: Mapping[str, Knobs], nth: int) -> Figures:
        f = rule(knobs)  # lucky: chat 60x4 = 240 ms, over its SLA, but for its first window
        return Figures(150.0, f.guard_p99_ms, f.embeddings_per_s, f.reranker_per_s) if (
            key(knobs) == key(lucky) and nth == 0
        ) else f  # fmt: skip

    plant = FakePlant(dict(START), luck)
    result = run(plant, scripted({2: params(emb=3, rer=1), 3: params(emb=2, rer=1)}), CONFIG)
    assert [len(plant.measured(k)) for k in (lucky, honest, PROTECTIVE)] == [2, 2, 1]  # no further
    assert result.best == honest and plant.current == honest
    assert result.best_score is not None and result.best_score.feasible


def test_the_winner_stays_applied_at_the_end() -> None:
    plant = FakePlant(dict(START))
    config = replace(CONFIG, budget=8, remeasure_top=2)
    result = run(plant, make_study("winner", optuna.storages.InMemoryStorage(), seed=3), config)
    assert result.best is not None and result.best_score is not None and result.best_score.feasible
    assert plant.knobs() == result.best
    assert plant.applies[-1].knobs == result.best  # the last apply, and no window after it
    assert plant.windows[-1].end <= plant.applies[-1].at
    # the rule is exact, so the re-measures agree and the winner is the best feasible measured
    feasible = [o.score.objective for o in result.outcomes if o.score is not None and o.score.feasible]
    assert result.best_score.objective == pytest.approx(max(feasible))
    assert score(SPEC, measured_by(rule(result.best), CONFIG.window_s), result.best).feasible


def test_an_interrupted_study_resumes_without_losing_or_repeating_a_trial() -> None:
    storage = optuna.storages.InMemoryStorage()
    config = replace(CONFIG, budget=5, remeasure_top=0)
    crashing = FakePlant(dict(START), crash_in_window=3)  # dies in trial 2's window
    with pytest.raises(Crash):
        run(crashing, make_study("resume", storage, seed=5), config)
    before = make_study("resume", storage, seed=5).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]

    plant = FakePlant(crashing.knobs(), clock=crashing.clock)  # the fleet as the crash left it
    result = run(plant, make_study("resume", storage, seed=5), config)
    after = make_study("resume", storage, seed=5).trials
    assert [t.state for t in after[:3]] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [(t.params, t.value) for t in after[:2]] == [(t.params, t.value) for t in before[:2]]
    assert sum(t.state == TrialState.COMPLETE for t in after) == config.budget
    # the resumed run measured only what the budget still lacked: 5 - 2 configurations, none of
    # them the baseline or the protective corner again
    measured = [o for o in result.outcomes if o.score is not None]
    assert len(measured) == len(plant.windows) == config.budget - 2
    assert all(o.trial > 2 for o in result.outcomes)
    assert [t.number for t in after if t.user_attrs.get("baseline")] == [0]


def test_a_proposal_over_the_memory_budget_is_never_applied() -> None:
    too_big = fleet(emb=3, rer=3)  # 42 + 3x2 + 3x6 + 1 = 67 GB > 65
    good = fleet(emb=2, rer=1)
    plant = FakePlant(dict(START))
    config = replace(CONFIG, budget=3)
    result = run(plant, scripted({2: params(emb=3, rer=3), 3: params(emb=2, rer=1)}), config)
    (refused,) = [o for o in result.outcomes if o.refused is not None]
    assert refused.trial == 2 and "67 GB" in refused.refused and refused.score is None
    assert all(memory_problems(SPEC, a.knobs) == [] for a in plant.applies)
    assert not plant.measured(too_big) and all(key(a.knobs) != key(too_big) for a in plant.applies)
    # refused, it does not count against the budget: three configurations measured, trial 3 last
    assert [key(w.knobs) for w in plant.windows[:3]] == [key(START), key(PROTECTIVE), key(good)]
    assert [o.trial for o in result.outcomes if o.score is not None] == [0, 1, 3]
