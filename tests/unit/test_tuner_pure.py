"""The tuner's pure parts, as tables: guardrails and SLA scoring on the default fleet."""

from __future__ import annotations

import math

import pytest

from domain.spec import Knobs, resolve_spec
from tuner.guardrails import Clip, Guardrails, guard
from tuner.objective import UNMEASURED, Measured, breaks_badly, score, violation

SPEC = resolve_spec(None)
START = {m.name: m.knobs for m in SPEC.models}
RAILS = Guardrails()


def k(model: str, **change: object) -> Knobs:
    return START[model].model_copy(update=change)


@pytest.mark.parametrize(
    ("proposal", "expected", "clips"),
    [
        # within bounds and step: applied as asked
        ({"embeddings": k("embeddings", instances=3)}, {"embeddings": k("embeddings", instances=3)}, []),
        # bounds: embeddings instances [1, 6]
        ({"embeddings": k("embeddings", instances=9)}, {"embeddings": k("embeddings", instances=4)},
         [Clip("embeddings", "instances", 9, 6, "bounds"), Clip("embeddings", "instances", 6, 4, "max_step")]),
        # max step: from 2 instances, at most 2 more
        ({"reranker": k("reranker", instances=4)}, {"reranker": k("reranker", instances=4)}, []),
        # chat's instances are bounded [1, 1]: a second 42 GB instance is clipped away
        ({"chat-llm": k("chat-llm", instances=2)}, {"chat-llm": k("chat-llm", instances=1)},
         [Clip("chat-llm", "instances", 2, 1, "bounds")]),
        # resources within [0, 2]
        ({"reranker": k("reranker", resources={"compute": 5})}, {"reranker": k("reranker", resources={"compute": 2})},
         [Clip("reranker", "resources.compute", 5, 2, "bounds")]),
        # dropping a resource is a count of 0
        ({"safety-guard": k("safety-guard", resources={})}, {"safety-guard": k("safety-guard", resources={})}, []),
    ],
)  # fmt: skip
def test_guard_clips_to_bounds_then_step(
    proposal: dict[str, Knobs], expected: dict[str, Knobs], clips: list[Clip]
) -> None:
    g = guard(SPEC, START, proposal, rails=RAILS, last_change={}, now=0.0)
    assert g.refused is None
    for name, knobs in expected.items():
        assert g.knobs[name] == knobs
    assert list(g.clips) == clips
    untouched = set(START) - set(proposal)
    assert all(g.knobs[n] == START[n] for n in untouched)


def test_a_proposal_that_cannot_fit_is_refused_whole() -> None:
    # From embeddings 4, reranker 4 (42 + 4x2 + 4x6 + 1 = 75 GB): embeddings to 6 and the guard
    # to 4, which the step rail makes 3: 42 + 6x2 + 4x6 + 3x1 = 81 GB > 80
    fits = {"embeddings": k("embeddings", instances=4), "reranker": k("reranker", instances=4)}
    current = {**START, **fits}
    too_big = {"embeddings": k("embeddings", instances=6), "safety-guard": k("safety-guard", instances=4)}
    g = guard(SPEC, current, too_big, rails=RAILS, last_change={}, now=0.0)
    assert g.refused is not None and "need 81 GB but the budget is 80 GB" in g.refused
    assert g.knobs == current  # nothing of it is applied


def test_cooldown_keeps_a_recently_changed_model() -> None:
    rails = Guardrails(cooldown_s=30)
    proposal = {"embeddings": k("embeddings", instances=3), "reranker": k("reranker", priority=2)}
    g = guard(SPEC, START, proposal, rails=rails, last_change={"embeddings": 100.0}, now=110.0)
    assert g.knobs["embeddings"] == START["embeddings"]  # changed 10 s ago
    assert g.knobs["reranker"] == proposal["reranker"]
    assert [c.rule for c in g.clips] == ["cooldown"]


@pytest.mark.parametrize(
    ("target", "value", "measured", "expected"),
    [
        (200.0, 150.0, Measured(100, 0, 1.0), -0.25),  # 25% under target
        (200.0, 300.0, Measured(100, 0, 1.0), 0.5),  # 50% over
        (200.0, 200.0, Measured(100, 0, 1.0), 0.0),  # on the line: met
        (20.0, 10.0, Measured(100, 2, 1.0), 0.02),  # fast but 2% failed: broken
        (20.0, 30.0, Measured(100, 2, 1.0), 0.5),  # slow and failing: the larger
        (20.0, None, Measured(100, 0, 1.0), UNMEASURED),  # no latency measured
        (20.0, 10.0, Measured(0, 0, 0.0), UNMEASURED),  # no traffic
        (20.0, 10.0, None, UNMEASURED),
    ],
)
def test_violation(target: float, value: float | None, measured: Measured | None, expected: float) -> None:
    assert violation(target, value, measured) == pytest.approx(expected)


def test_score_of_the_default_fleet() -> None:
    measured = {
        "chat-llm": Measured(60, 0, 3.0, p99_ms=900.0, ttft_p99_ms=180.0),
        "safety-guard": Measured(300, 0, 15.0, p99_ms=25.0),
        "embeddings": Measured(40, 0, 320.0),
        "reranker": Measured(20, 1, 76.0),
    }
    s = score(SPEC, measured, START)
    assert s.bulk_goodput == pytest.approx(396.0)  # 320 + 76 items/s
    assert s.violations == {"chat-llm": pytest.approx(-0.1), "safety-guard": pytest.approx(0.25)}
    assert not s.feasible
    assert s.constraints() == [pytest.approx(-0.1), pytest.approx(0.25)]  # chat-llm, safety-guard
    assert s.memory_gb == 59  # 42 + 2x2 + 2x6 + 1
    assert s.objective == pytest.approx(396.0 - 0.59)


def test_equal_goodput_prefers_less_memory() -> None:
    measured = {"embeddings": Measured(10, 0, 100.0)}
    small = score(SPEC, measured, START)
    big = score(SPEC, measured, {**START, "embeddings": k("embeddings", instances=6)})
    assert small.objective > big.objective and math.isclose(small.bulk_goodput, big.bulk_goodput)


@pytest.mark.parametrize(
    ("chat_ttft", "guard_p99", "broken"),
    [(150.0, 10.0, []), (390.0, 39.0, []), (450.0, 10.0, ["chat-llm"]), (150.0, 41.0, ["safety-guard"])],
)
def test_breaks_badly_at_twice_the_target(chat_ttft: float, guard_p99: float, broken: list[str]) -> None:
    measured = {
        "chat-llm": Measured(10, 0, 1.0, ttft_p99_ms=chat_ttft),
        "safety-guard": Measured(10, 0, 1.0, p99_ms=guard_p99),
    }
    assert breaks_badly(SPEC, measured) == broken


def test_search_space_of_the_default_fleet() -> None:
    from tuner.space import search_space

    dims = {d.name: (d.low, d.high) for d in search_space(SPEC)}
    assert dims["embeddings.instances"] == (1, 6)
    assert dims["reranker.resources.compute"] == (0, 2)
    assert "chat-llm.instances" not in dims  # bounded [1, 1]: nothing to search
    assert set(d for d in dims if d.startswith("chat-llm.")) == {
        "chat-llm.max_queue_delay_us", "chat-llm.priority", "chat-llm.max_queue_size",
        "chat-llm.queue_timeout_us", "chat-llm.resources.compute",
    }  # fmt: skip
    assert {d.model for d in search_space(SPEC, ["reranker"])} == {"reranker"}
    with pytest.raises(KeyError, match="unknown model"):
        search_space(SPEC, ["nope"])


def test_params_and_knobs_round_trip() -> None:
    from tuner.space import knobs_from_params, params_from_knobs, search_space

    dims = search_space(SPEC)
    assert knobs_from_params(START, params_from_knobs(dims, START)) == START
    candidate = {"embeddings.instances": 4, "reranker.resources.compute": 0, "chat-llm.priority": 2}
    knobs = knobs_from_params(START, candidate)
    assert knobs["embeddings"].instances == 4
    assert knobs["reranker"].resources == {}  # a count of 0 drops the resource
    assert knobs["chat-llm"].priority == 2 and knobs["safety-guard"] == START["safety-guard"]
    with pytest.raises(KeyError, match="unknown knob 'speed'"):
        knobs_from_params(START, {"embeddings.speed": 1})


def test_the_protective_corner_frees_latency_critical_models_and_shrinks_bulk() -> None:
    from tuner.space import knobs_from_params, params_from_knobs, protective_params, search_space

    dims = search_space(SPEC)
    knobs = knobs_from_params(START, protective_params(SPEC, dims, params_from_knobs(dims, START)))
    # chat and the guard: compute tokens [0, 2] and [0, 1] -> 0 (dropped); priority already 1
    assert knobs["chat-llm"] == k("chat-llm", resources={})
    assert knobs["safety-guard"] == k("safety-guard", resources={})
    # bulk models: instances 2 -> their lower bound 1; their tokens unchanged
    assert knobs["embeddings"] == k("embeddings", instances=1)
    assert knobs["reranker"] == k("reranker", instances=1)
    # out of scope, nothing moves
    only_reranker = search_space(SPEC, ["reranker"])
    start = params_from_knobs(only_reranker, START)
    assert (
        knobs_from_params(START, protective_params(SPEC, only_reranker, start))["chat-llm"]
        == START["chat-llm"]
    )
