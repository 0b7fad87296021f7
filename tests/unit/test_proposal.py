"""The one proposal path, as tables: every writer of configurations gets the same rules from
`domain.proposal.propose`, and nothing records a version without it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from domain.proposal import ACTORS, Clip, Guardrails, Proposal, propose
from domain.spec import Knobs, knob_problems, resolve_spec

SPEC = resolve_spec(None)
START = {m.name: m.knobs for m in SPEC.models}
RAILS = Guardrails()
ROOT = Path(__file__).resolve().parents[2]


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
        # the guard's resources within [0, 1] (asking 2, which the server has: a bound, not a limit)
        ({"safety-guard": k("safety-guard", resources={"compute": 2})},
         {"safety-guard": k("safety-guard", resources={"compute": 1})},
         [Clip("safety-guard", "resources.compute", 2, 1, "bounds")]),
        # dropping a resource is a count of 0
        ({"safety-guard": k("safety-guard", resources={})}, {"safety-guard": k("safety-guard", resources={})}, []),
    ],
)  # fmt: skip
def test_bounds_then_step(proposal: dict[str, Knobs], expected: dict[str, Knobs], clips: list[Clip]) -> None:
    g = propose(SPEC, START, proposal, actor="tuner", now=0.0, rails=RAILS)
    assert g.accepted
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
    g = propose(SPEC, current, too_big, actor="tuner", now=0.0, rails=RAILS)
    assert g.refused is not None and "need 81 GB but the budget is 80 GB" in g.refused
    assert g.knobs == current and g.changes == {}  # nothing of it may be recorded


def test_cooldown_keeps_a_recently_changed_model() -> None:
    rails = Guardrails(cooldown_s=30)
    proposal = {"embeddings": k("embeddings", instances=3), "reranker": k("reranker", priority=2)}
    g = propose(
        SPEC, START, proposal, actor="tuner", now=110.0, rails=rails, last_change={"embeddings": 100.0}
    )
    assert g.knobs["embeddings"] == START["embeddings"]  # changed 10 s ago
    assert g.knobs["reranker"] == proposal["reranker"]
    assert [c.rule for c in g.clips] == ["cooldown"]


# Every writer of configurations and what it passes to `propose` (the call sites named):
WRITERS: dict[str, dict[str, Any]] = {
    # controlplane/api/proposals.py propose_one: POST /models/{m}/config and its rollback
    "person": {"actor": "person"},
    # controlplane/api/routes/alerts.py: back to the newest tuning run's best, measured safe
    "alert fallback": {"actor": "alert", "known_safe": True},
    # tuner/loop.py Tuner._propose: a trial (with the run's rails and cooldowns)
    "tuner trial": {"actor": "tuner", "rails": Guardrails(cooldown_s=30), "last_change": {}},
    # tuner/loop.py Tuner._apply_safe / _remeasure_best: restore, re-measure, the winner
    "tuner restore": {"actor": "tuner", "known_safe": True},
    # the SLO controller, to come: it goes through the same function
    "controller": {"actor": "controller"},
}


def test_every_actor_is_a_writer_in_the_table() -> None:
    assert {w["actor"] for w in WRITERS.values()} == set(ACTORS)


@pytest.mark.parametrize("writer", WRITERS)
def test_no_writer_passes_the_memory_budget(writer: str) -> None:
    # from embeddings 4, reranker 4 (42 + 4x2 + 4x6 + 1 = 75 GB): embeddings to 6 and the guard
    # to 3, both within bounds and one step: 42 + 6x2 + 4x6 + 3x1 = 81 GB > 80
    current = {**START, "embeddings": k("embeddings", instances=4), "reranker": k("reranker", instances=4)}
    p = propose(SPEC, current, {"embeddings": k("embeddings", instances=6), "safety-guard": k("safety-guard", instances=3)},
                now=0.0, **WRITERS[writer])  # fmt: skip
    assert not p.accepted and "need 81 GB but the budget is 80 GB" in (p.refused or "")
    assert p.refused_field == "knobs.instances" and p.changes == {} and p.knobs == current
    assert p.memory["dev0"].used_gb == 81 and not p.memory["dev0"].fits


@pytest.mark.parametrize("writer", WRITERS)
def test_no_writer_passes_a_server_limit(writer: str) -> None:
    # triton0 has 2 compute tokens in all; the reranker's bounds [0, 2] would clip 5 to 2, but a
    # limit is refused, not clipped: whoever asked for 5 is wrong about the server
    p = propose(
        SPEC, START, {"reranker": k("reranker", resources={"compute": 5})}, now=0.0, **WRITERS[writer]
    )
    assert not p.accepted and p.refused_field == "knobs.resources.compute"
    assert p.refused == "reranker: knobs.resources.compute: asks for 5 but server 'triton0' has 2"


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_is_held_to_the_bounds(writer: str) -> None:
    # embeddings' instances are bounded [1, 6]; known-safe or not, 9 becomes 6 at most
    p = propose(SPEC, START, {"embeddings": k("embeddings", instances=9)}, now=0.0, **WRITERS[writer])
    assert p.accepted and Clip("embeddings", "instances", 9, 6, "bounds") in p.clips
    assert p.knobs["embeddings"].instances <= 6


@pytest.mark.parametrize(
    ("writer", "instances", "rules"),
    [
        ("person", 4, ["bounds", "max_step"]),  # 2 -> 6, stepped to 4
        ("alert fallback", 6, ["bounds"]),  # measured safe: at once
        ("tuner trial", 4, ["bounds", "max_step"]),
        ("tuner restore", 6, ["bounds"]),
        ("controller", 4, ["bounds", "max_step"]),
    ],
)
def test_only_a_return_to_a_safe_configuration_skips_the_step(
    writer: str, instances: int, rules: list[str]
) -> None:
    p = propose(SPEC, START, {"embeddings": k("embeddings", instances=9)}, now=0.0, **WRITERS[writer])
    assert p.knobs["embeddings"].instances == instances
    assert [c.rule for c in p.clips] == rules


@pytest.mark.parametrize(
    ("pending", "target", "changes"),
    [
        # nothing pending, target is what runs: nothing to record
        ({}, START["embeddings"], {}),
        # nothing pending, a change: recorded
        ({}, k("embeddings", instances=3), {"embeddings": k("embeddings", instances=3)}),
        # already asked for exactly this: nothing new to record
        ({"embeddings": k("embeddings", instances=3)}, k("embeddings", instances=3), {}),
        # a pending change overtaken by a return to what runs: recorded, so the newest wins
        ({"embeddings": k("embeddings", instances=3)}, START["embeddings"], {"embeddings": START["embeddings"]}),
    ],
)  # fmt: skip
def test_nothing_to_change_is_decided_once(
    pending: dict[str, Knobs], target: Knobs, changes: dict[str, Knobs]
) -> None:
    for writer in WRITERS.values():
        p = propose(SPEC, START, {"embeddings": target}, now=0.0, pending=pending, **writer)
        assert p.changes == changes


def test_only_the_targeted_models_change() -> None:
    p = propose(SPEC, START, {"reranker": k("reranker", priority=2)}, actor="person", now=0.0)
    assert p.changes == {"reranker": k("reranker", priority=2)}
    assert {n: v for n, v in p.knobs.items() if n != "reranker"} == {
        n: v for n, v in START.items() if n != "reranker"
    }


def test_an_unknown_model_is_refused() -> None:
    p = propose(SPEC, START, {"nowhere": START["embeddings"]}, actor="person", now=0.0)
    assert not p.accepted and p.refused_field == "model" and "nowhere" in (p.refused or "")


def test_the_spec_and_the_proposal_share_the_limit_rule() -> None:
    server = SPEC.server("triton0")
    assert knob_problems(server, k("reranker", resources={"compute": 2})) == []
    assert knob_problems(server, k("reranker", resources={"compute": 3})) == [
        ("knobs.resources.compute", "asks for 3 but server 'triton0' has 2")
    ]


def test_a_refused_proposal_cannot_be_recorded() -> None:
    from store.configs import record

    refused = Proposal("person", dict(START), {}, refused="no")
    with pytest.raises(ValueError, match="refused proposal"):
        record(None, refused, "why", 0.0)  # type: ignore[arg-type]  # refused before any query


def test_no_writer_records_a_version_around_the_proposal_path() -> None:
    """Outside the store and the tests, desired versions are recorded with `configs.record`,
    which takes a `Proposal`: nothing calls the raw `configs.propose`."""
    out = subprocess.run(
        ["git", "grep", "-n", "-E", r"configs\.propose\(|from store\.configs import .*\bpropose\b", "--",
         "*.py", ":!store/", ":!tests/"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 1, f"versions recorded around the proposal path:\n{out.stdout}"


def test_batch_sizes_and_compute_priority_go_through_the_same_rails() -> None:
    running = {**START, "embeddings": k("embeddings", max_batch_size=64, preferred_batch_sizes=(16, 32))}
    # max batch 64 -> 4 is below its bounds [8, 64]: 8; a preferred size above 8 goes with it.
    target = {
        "embeddings": k(
            "embeddings", max_batch_size=4, preferred_batch_sizes=(16, 32), compute_priority="max"
        )
    }
    g = propose(SPEC, running, target, actor="controller", now=0.0, rails=RAILS)
    assert g.accepted
    got = g.knobs["embeddings"]
    assert (got.max_batch_size, got.preferred_batch_sizes, got.compute_priority) == (8, (), "default")
    assert [(c.knob, c.rule) for c in g.clips] == [
        ("compute_priority", "bounds"),  # [default, min]: max is out (by place, 0 -> 1)
        ("max_batch_size", "bounds"),
        ("preferred_batch_sizes", "max_batch_size"),
    ]
    # A max batch size of 0 (the model's own) asks for what runs: nothing to change.
    same = {"embeddings": running["embeddings"].with_values({"max_batch_size": 0})}
    assert propose(SPEC, running, same, actor="person", now=0.0).changes == {}
