"""The tuner's pure parts, as tables: SLA scoring and the search space on the default fleet."""

from __future__ import annotations

import math

import pytest

from domain.spec import Knobs, resolve_spec
from tuner.objective import UNMEASURED, Measured, breaks_badly, score, violation

SPEC = resolve_spec(None)
START = {m.name: m.knobs for m in SPEC.models}


def k(model: str, **change: object) -> Knobs:
    return START[model].model_copy(update=change)


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
    # bulk models: instances 2 -> their lower bound 1, compute priority default -> min (the
    # highest place its bounds [default, min] allow); their tokens unchanged
    assert knobs["embeddings"] == k("embeddings", instances=1, compute_priority="min")
    assert knobs["reranker"] == k("reranker", instances=1, compute_priority="min")
    # out of scope, nothing moves
    only_reranker = search_space(SPEC, ["reranker"])
    start = params_from_knobs(only_reranker, START)
    assert (
        knobs_from_params(START, protective_params(SPEC, only_reranker, start))["chat-llm"]
        == START["chat-llm"]
    )
