"""The fleet spec: embedded fleets are valid, and every kind of bad spec is refused before anything
starts, naming the file, the field path and the reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain.spec import (
    EMBEDDED_FLEETS,
    Knobs,
    SpecError,
    device_memory_used,
    embedded_spec_path,
    load_spec,
    resolve_spec,
)


def default_data() -> dict[str, Any]:
    return yaml.safe_load(embedded_spec_path("default").read_text())


@pytest.mark.parametrize("name", EMBEDDED_FLEETS)
def test_embedded_fleets_are_valid(name: str) -> None:
    spec = resolve_spec(name)
    assert spec.name == name
    assert {"chat-llm", "embeddings", "reranker", "safety-guard"} <= set(spec.model_names)


def test_default_fleet_is_the_inventory_on_one_80gb_device() -> None:
    spec = resolve_spec(None)
    assert [d.memory_gb for d in spec.devices] == [80]
    mem = {m.name: m.memory_gb_per_instance for m in spec.models}
    assert mem == {"chat-llm": 42, "embeddings": 2, "reranker": 6, "safety-guard": 1}
    chat = spec.model("chat-llm")
    assert (
        chat.streaming and chat.sla is not None and (chat.sla.metric, chat.sla.target_ms) == ("ttft_p99", 200)
    )
    guard = spec.model("safety-guard")
    assert guard.sla is not None and (guard.sla.metric, guard.sla.target_ms) == ("latency_p99", 20)
    # 42 + 2x2 + 2x6 + 1 at the starting knobs
    assert device_memory_used(spec, {m.name: m.knobs for m in spec.models}) == {"dev0": 59}


def test_large_fleet_needs_two_devices() -> None:
    spec = resolve_spec("large")
    assert spec.model("chat-llm-v3").memory_gb_per_instance == 40
    assert len(spec.devices) == 2
    assert spec.model("chat-llm").device != spec.model("chat-llm-v3").device


def _break(path: list[Any], value: Any) -> dict[str, Any]:
    data = default_data()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()

# (what is broken, the field path the error must name, words the reason must contain)
BAD = [
    (
        ["models", 0, "knobs", "max_queue_delay_us"],
        -5,
        "models[0](chat-llm).knobs.max_queue_delay_us",
        "greater than or equal to 0",
    ),
    (["models", 1, "server"], "nowhere", "models[1](embeddings).server", "unknown server 'nowhere'"),
    (["models", 1, "device"], "gpu9", "models[1](embeddings).device", "unknown device 'gpu9'"),
    (["models", 1, "knobs", "instances"], 16, "devices", "need 87 GB but the budget is 80 GB"),
    (["models", 2, "knobs", "instances"], 9, "models[2](reranker).knobs.instances", "outside bounds [1, 4]"),
    (["models", 3, "sla"], _DELETE, "models[3](safety-guard).sla", "needs an SLA"),
    (
        ["models", 1, "sla"],
        {"metric": "ttft_p99", "target_ms": 50},
        "models[1](embeddings).sla.metric",
        "streaming",
    ),
    (
        ["models", 0, "source"],
        {"builtin": "chat", "engine_dir": "/x"},
        "models[0](chat-llm).source",
        "exactly one",
    ),
    (["models", 0, "colour"], "blue", "models[0](chat-llm).colour", "Extra inputs are not permitted"),
    (["models", 0, "source"], {"builtin": "gpt5"}, "models[0](chat-llm).source.builtin", "Input should be"),
    (
        ["models", 0, "bounds", "priority"],
        [4, 1],
        "models[0](chat-llm).bounds.priority",
        "low 4 is above high 1",
    ),
    (["models", 0, "role"], "vip", "models[0](chat-llm).role", "latency-critical"),
    (["models", 0, "backend"], "tensorrtllm", "models[0](chat-llm).source", "needs source.engine_dir"),
    (
        ["models", 0, "knobs", "resources"],
        {"compute": 3},
        "models[0](chat-llm).knobs.resources.compute",
        "has 2",
    ),
    (["servers", 0, "http_url"], "http://127.0.0.1:8000", "servers[0](triton0)", "needs all of http_url"),
]


@pytest.mark.parametrize(("path", "value", "field", "reason"), BAD)
def test_bad_spec_names_file_field_and_reason(
    tmp_path: Path, path: list[Any], value: Any, field: str, reason: str
) -> None:
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(_break(path, value)))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    text = str(err.value)
    assert str(spec_file) in text
    assert any(p == field or p.startswith(field) for p, _ in err.value.problems), text
    assert reason in text, text


def test_duplicate_ports_and_names(tmp_path: Path) -> None:
    data = default_data()
    data["servers"][0].update(http_port=8000, grpc_port=8000)
    data["models"][1]["name"] = "chat-llm"
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    problems = dict(err.value.problems)
    assert "port 8000 is already used by servers[0].http_port" in problems["servers[0].grpc_port"]
    assert problems["models[1](chat-llm).name"] == "duplicate name 'chat-llm'"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = default_data()
    data["models"][1]["server"] = "nowhere"
    data["models"][2]["device"] = "nowhere"
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert len(err.value.problems) == 2


@pytest.mark.parametrize(("text", "field"), [("models: [", "(yaml)"), ("- just\n- a list", "(top level)")])
def test_unreadable_yaml(tmp_path: Path, text: str, field: str) -> None:
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert err.value.problems[0][0] == field


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="No such file"):
        load_spec("/nonexistent/fleet.yaml")


def test_relative_repository_is_taken_from_the_spec_folder(tmp_path: Path) -> None:
    data = default_data()
    data["models"][1]["source"] = {"repository": "models"}
    (tmp_path / "sub").mkdir()
    spec_file = tmp_path / "sub" / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(copy.deepcopy(data)))
    assert load_spec(spec_file).model("embeddings").source.repository == tmp_path / "sub" / "models"


@pytest.mark.parametrize(
    ("resources", "normalised"),
    [({"compute": 0}, {}), ({"compute": 2, "a": 1}, {"a": 1, "compute": 2}), ({}, {})],
)
def test_zero_resources_are_dropped(resources: dict[str, int], normalised: dict[str, int]) -> None:
    assert Knobs(resources=resources).resources == normalised
