"""The packing planner: placements, bounds, rules, errors that name the model and the rule, and the
fleet specs it writes (pure: no server, no store)."""

from __future__ import annotations

from typing import Any

import pytest

from domain.spec import SpecError
from packing.inventory import parse_inventory, resolve_inventory
from packing.planner import LearnedRule, PlanError, fleet_spec, plan


def _model(name: str, gb: float, role: str = "bulk", **placement: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "role": role,
        "source": {"builtin": "embedder"},
        "memory_gb_per_instance": gb,
    }
    if role == "latency-critical":
        m["sla"] = {"metric": "latency_p99", "target_ms": 50}
    if placement:
        m["placement"] = placement
    return m


def _inventory(*models: dict[str, Any], pools: list[dict[str, Any]] | None = None) -> Any:
    pools = pools or [{"name": "gpu", "kind": "gpu", "memory_gb": 80}]
    return parse_inventory({"name": "t", "devices": pools, "models": list(models)})


def test_the_seed_inventory_fits_two_devices_instead_of_five_with_the_llms_apart() -> None:
    inv = resolve_inventory("seed")
    p = plan(inv)
    assert (len(p.devices), p.lower_bound, p.naive, p.optimal) == (2, 2, 5, True)  # 87 GB over 80 GB
    assert p.placement["chat-llm"] != p.placement["chat-llm-v3"]
    assert sorted(p.memory_used_gb.values()) == [43.0, 44.0]  # balanced: 40+2+1 and 40+4
    assert any("kept apart by chat-llm.placement.apart_from[llm]" in r for r in p.reasons)
    assert p.reasons[0].startswith("memory: 87 GB reserved")


def test_without_the_rule_the_two_llms_may_share_a_device() -> None:
    # 40 + 40 fit 80 GB exactly: only the rule keeps them apart.
    inv = _inventory(_model("a", 40), _model("b", 40))
    assert len(plan(inv).devices) == 1
    apart = _inventory(_model("a", 40, apart_from=["b"]), _model("b", 40))
    p = plan(apart)
    assert len(p.devices) == 2 and p.lower_bound == 1
    assert any(
        "a.placement.apart_from[b] forces the split: without it 1 device(s) would do" in r for r in p.reasons
    )


def test_the_fullest_device_is_as_empty_as_the_count_allows() -> None:
    # 120 GB on 80 GB devices: 2 devices; the best split is 70 / 50 (50+20 and 30+20).
    inv = _inventory(_model("a", 50), _model("b", 30), _model("c", 20), _model("d", 20))
    p = plan(inv)
    assert len(p.devices) == 2
    assert max(p.memory_used_gb.values()) == 70


def test_a_whole_device_model_has_its_device_to_itself() -> None:
    inv = _inventory(_model("big", 10, whole_device=True), _model("x", 5), _model("y", 5))
    p = plan(inv)
    assert p.models_on(p.placement["big"]) == ["big"]
    assert len(p.devices) == 2


def test_a_pinned_model_goes_on_its_class() -> None:
    pools = [
        {"name": "h100", "kind": "gpu", "memory_gb": 80},
        {"name": "l4", "kind": "gpu", "memory_gb": 24},
    ]
    inv = _inventory(_model("guard", 1, device_class="l4"), _model("chat", 40), pools=pools)
    p = plan(inv)
    assert p.placement["guard"].startswith("l4-")
    assert any("guard on a l4 device" in r for r in p.reasons)


def test_a_model_bigger_than_any_device_is_named() -> None:
    inv = _inventory(_model("huge", 90))
    with pytest.raises(
        PlanError, match=r"model 'huge': 1 instance\(s\) x 90 GB = 90 GB is more than any device"
    ):
        plan(inv)


def test_a_model_bigger_than_its_pinned_class_names_the_rule() -> None:
    pools = [{"name": "h100", "kind": "gpu", "memory_gb": 80}, {"name": "l4", "kind": "gpu", "memory_gb": 24}]
    inv = _inventory(_model("chat", 40, device_class="l4"), pools=pools)
    with pytest.raises(PlanError, match=r"chat.*device class 'l4' \(rule chat.placement.device_class\)"):
        plan(inv)


def test_rules_that_contradict_each_other_are_named() -> None:
    # One device, two models that each need it whole.
    pools = [{"name": "gpu", "kind": "gpu", "memory_gb": 80, "count": 1}]
    inv = _inventory(_model("a", 1, whole_device=True), _model("b", 1), pools=pools)
    with pytest.raises(PlanError, match=r"contradict each other there: a.placement.whole_device"):
        plan(inv)


def test_a_learned_rule_changes_the_plan() -> None:
    inv = _inventory(_model("guard", 1, "latency-critical"), _model("embeddings", 2))
    assert len(plan(inv).devices) == 1
    learned = [LearnedRule("embeddings", "guard", "guard p99 31 ms against 20 with every protective step")]
    p = plan(inv, learned)
    assert p.placement["guard"] != p.placement["embeddings"]
    assert any("learned: embeddings cannot share with guard" in r for r in p.reasons)
    # A rule about a model the inventory does not have is ignored.
    assert len(plan(inv, [LearnedRule("guard", "elsewhere", "-")]).devices) == 1


@pytest.mark.parametrize(
    ("model", "pool", "path"),
    [
        (_model("a", 1, apart_from=["nobody"]), {}, "models[0](a).placement.apart_from[0]"),
        (_model("a", 1, device_class="tpu"), {}, "models[0](a).placement.device_class"),
        (_model("a", 1), {"cores_per_device": 2}, "devices[0].cores_per_device"),
        (_model("a", -1), {}, "models[0](a).memory_gb_per_instance"),
    ],
)
def test_a_bad_inventory_names_the_field(model: dict[str, Any], pool: dict[str, Any], path: str) -> None:
    pools = [{"name": "gpu", "kind": "gpu", "memory_gb": 80, **pool}]
    with pytest.raises(SpecError) as err:
        _inventory(model, pools=pools)
    assert any(p == path for p, _ in err.value.problems), err.value.problems


def test_the_plan_becomes_a_fleet_spec_of_one_server_per_device() -> None:
    inv = resolve_inventory("seed")
    p = plan(inv)
    spec = fleet_spec(inv, p)
    assert [d.name for d in spec.devices] == ["dev-0", "dev-1"]
    assert [s.name for s in spec.servers] == ["triton-dev-0", "triton-dev-1"]
    for m in spec.models:
        assert m.device == p.placement[m.name] and m.server == f"triton-{m.device}"
        assert m.knobs.instances == 1
    assert spec.model("chat-llm").sla is not None and spec.model("chat-llm").streaming
    one = fleet_spec(inv, p, [p.devices[1]])
    assert [s.name for s in one.servers] == ["triton-dev-1"]
    assert {m.name for m in one.models} == set(p.models_on("dev-1"))


def test_the_starting_instances_are_the_reserved_minimum() -> None:
    m = _model("e", 2)
    m["knobs"] = {"instances": 3}
    m["bounds"] = {"instances": [2, 6]}
    inv = _inventory(m)
    p = plan(inv)
    assert p.instances["e"] == 2 and p.memory_used_gb[p.placement["e"]] == 4
    assert fleet_spec(inv, p).model("e").knobs.instances == 2
