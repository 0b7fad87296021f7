"""The fleet spec: embedded fleets are valid, and every kind of bad spec is refused before anything
starts, naming the file, the field path and the reason."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain.spec import (
    EMBEDDED_FLEETS,
    MAX_MODELS,
    MAX_SPEC_BYTES,
    Knobs,
    SpecError,
    device_memory_used,
    embedded_spec_path,
    load_spec,
    parse_spec,
    resolve_spec,
)


def default_data() -> dict[str, Any]:
    return yaml.safe_load(embedded_spec_path("default").read_text())


@pytest.mark.parametrize("name", EMBEDDED_FLEETS)
def test_embedded_fleets_are_valid(name: str) -> None:
    # gpu-trtllm is a template for a GPU host: valid as data; its engine_dir is checked where it runs
    spec = resolve_spec(name, check_files=name != "gpu-trtllm")
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
    # NaN passes every bound (each comparison is false), so no bound may name it
    (["models", 3, "sla", "target_ms"], float("nan"), "models[3](safety-guard).sla.target_ms", "finite number"),
    (["devices", 0, "memory_gb"], float("inf"), "devices[0](dev0).memory_gb", "finite number"),
    (["models", 1, "memory_gb_per_instance"], float("nan"), "models[1](embeddings).memory_gb_per_instance",
     "finite number"),
    # compute priority: a Triton priority by name, within its bounds (embeddings [default, min])
    (["models", 1, "knobs", "compute_priority"], "low", "models[1](embeddings).knobs.compute_priority",
     "'max', 'default' or 'min'"),
    (["models", 1, "knobs", "compute_priority"], "max", "models[1](embeddings).knobs.compute_priority",
     "max is outside bounds [default, min]"),
    (["models", 1, "bounds", "compute_priority"], ["default", "lowest"],
     "models[1](embeddings).bounds.compute_priority", "'lowest' is not one of max, default, min"),
    # batch sizes: within bounds (embeddings [8, 64]); preferred ones at most the max
    (["models", 1, "knobs", "max_batch_size"], 4, "models[1](embeddings).knobs.max_batch_size",
     "4 is outside bounds [8, 64]"),
    (["models", 1, "knobs"], {"max_batch_size": 16, "preferred_batch_sizes": [8, 32]},
     "models[1](embeddings).knobs", "preferred_batch_sizes [8, 32] must be at most max_batch_size 16"),
]  # fmt: skip


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
    (tmp_path / "sub" / "models" / "embeddings").mkdir(parents=True)
    (tmp_path / "sub" / "models" / "embeddings" / "config.pbtxt").write_text('backend: "python"\n')
    spec_file = tmp_path / "sub" / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(copy.deepcopy(data)))
    assert load_spec(spec_file).model("embeddings").source.repository == tmp_path / "sub" / "models"


@pytest.mark.parametrize(
    ("resources", "normalised"),
    [({"compute": 0}, {}), ({"compute": 2, "a": 1}, {"a": 1, "compute": 2}), ({}, {})],
)
def test_zero_resources_are_dropped(resources: dict[str, int], normalised: dict[str, int]) -> None:
    assert Knobs(resources=resources).resources == normalised


# ---------------------------------------------------------------- sources on disk
def _repo(root: Path, model: str = "embeddings") -> Path:
    """A user's model repository holding `model` (config.pbtxt and a version folder)."""
    (root / model / "1").mkdir(parents=True)
    (root / model / "config.pbtxt").write_text('backend: "python"\n')
    (root / model / "1" / "model.py").write_text("# the user's model\n")
    return root


def _outside(tmp: Path) -> Path:
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "weights.bin").write_bytes(b"\0")
    return tmp / "outside"


# (how the repository is made under tmp, words the reason must contain); the spec names "repo"
REPOSITORIES = [
    ("missing", lambda tmp: None, "does not exist"),
    ("a file", lambda tmp: (tmp / "repo").write_text(""), "is not a folder"),
    ("like /etc", lambda tmp: _repo(tmp / "repo", model="other"), "holds no embeddings/config.pbtxt"),
    ("empty model folder", lambda tmp: (tmp / "repo" / "embeddings").mkdir(parents=True), "holds no"),
    (
        "a version folder linked out",
        lambda tmp: (_repo(tmp / "repo") / "embeddings" / "2").symlink_to(_outside(tmp)),
        "embeddings/2 leads outside the repository, to",
    ),
    (
        "a weights file linked out, deep down",
        lambda tmp: (_repo(tmp / "repo") / "embeddings" / "1" / "w.bin").symlink_to(
            _outside(tmp) / "weights.bin"
        ),
        "embeddings/1/w.bin leads outside the repository",
    ),
    (
        "a link up and out",
        lambda tmp: (_outside(tmp), (_repo(tmp / "repo") / "embeddings" / "1" / "up").symlink_to("../../../outside")),
        "leads outside the repository",
    ),
    (
        "the model folder linked out",
        lambda tmp: ((tmp / "repo").mkdir(), (tmp / "repo" / "embeddings").symlink_to(_repo(tmp / "elsewhere") / "embeddings")),
        "repo/embeddings leads outside the repository",
    ),
    (
        "a broken link",
        lambda tmp: (_repo(tmp / "repo") / "embeddings" / "1" / "gone").symlink_to(tmp / "nowhere"),
        "embeddings/1/gone is a broken link",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason"), [r[1:] for r in REPOSITORIES], ids=[r[0] for r in REPOSITORIES])
def test_a_repository_fleet_up_could_not_use_is_refused(tmp_path: Path, make: Any, reason: str) -> None:
    make(tmp_path)
    data = default_data()
    data["models"][1]["source"] = {"repository": "repo"}  # relative: resolved from the spec's folder
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    text = str(err.value)
    assert str(spec_file) in text
    ((field, why),) = err.value.problems
    assert field == "models[1](embeddings).source.repository", text
    assert reason in why, text


def test_links_that_stay_in_the_repository_are_fine(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "real")
    _repo(repo, model="shared-weights")
    (repo / "embeddings" / "2").symlink_to(repo / "shared-weights" / "1")  # absolute, inside
    (repo / "embeddings" / "1" / "cfg").symlink_to("../config.pbtxt")  # relative, inside
    (tmp_path / "repo").symlink_to(repo)  # the repository itself may be a link
    data = default_data()
    data["models"][1]["source"] = {"repository": str(tmp_path / "repo")}
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    assert load_spec(spec_file).model("embeddings").source.repository == tmp_path / "repo"


def test_many_bad_links_are_summed_up(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    for i in range(5):
        (repo / "embeddings" / f"w{i}").symlink_to(_outside(tmp_path) / "weights.bin")
    data = default_data()
    data["models"][1]["source"] = {"repository": str(repo)}
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    reasons = [why for _, why in err.value.problems]
    assert len(reasons) == 4 and reasons[-1] == "and 2 more links like these"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(lambda tmp: None, "does not exist"), (lambda tmp: (tmp / "engine").write_text(""), "is not a folder")],
)
def test_an_engine_dir_must_be_a_folder(tmp_path: Path, make: Any, reason: str) -> None:
    make(tmp_path)
    data = yaml.safe_load(embedded_spec_path("gpu-trtllm").read_text())
    data["models"][0]["source"] = {"engine_dir": "engine"}
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert err.value.problems == [
        ("models[0](chat-llm).source.engine_dir", f"{tmp_path / 'engine'} {reason}")
    ]
    assert load_spec(spec_file, check_files=False).model("chat-llm").source.engine_dir == tmp_path / "engine"
    (tmp_path / "engine").unlink(missing_ok=True)
    (tmp_path / "engine").mkdir()
    assert load_spec(spec_file).model("chat-llm").source.engine_dir == tmp_path / "engine"


# ---------------------------------------------------------------- size, before any parsing
def test_a_spec_over_1_mib_is_refused_before_its_yaml_is_parsed(tmp_path: Path) -> None:
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(default_data()) + "#" * MAX_SPEC_BYTES)
    began = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert time.perf_counter() - began < 0.5
    assert str(spec_file) in str(err.value)
    assert err.value.problems == [("(file)", "is over the limit of 1048576 bytes (1 MiB)")]


def test_too_many_models_name_the_field(tmp_path: Path) -> None:
    data = default_data()
    bulk = data["models"][1]
    data["models"] += [dict(bulk, name=f"bulk{i}") for i in range(MAX_MODELS)]
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data, default_flow_style=True, width=1 << 20))
    assert spec_file.stat().st_size < MAX_SPEC_BYTES  # refused for its models, not its size
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    ((field, why),) = err.value.problems
    assert field == "models" and f"at most {MAX_MODELS} items" in why


def test_yaml_aliases_cannot_blow_a_small_spec_up(tmp_path: Path) -> None:
    lines = [
        f"x: &a [{', '.join(['1'] * 100)}]",
        f"y: &b [{', '.join(['*a'] * 100)}]",
        f"z: [{', '.join(['*b'] * 100)}]",  # 100 x 100 x 100 values from 1 KB
        "devices: []",
        "servers: []",
        "models: []",
    ]
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text("\n".join(lines))
    began = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert time.perf_counter() - began < 1
    assert err.value.problems[0][0] == "(top level)" and "expands to over" in err.value.problems[0][1]


# ----------------------------------------------------------------- cpu devices as sets of cores


def two_server_data() -> dict[str, Any]:
    return yaml.safe_load(embedded_spec_path("two-server").read_text())


def test_two_server_fleet_is_the_team_on_two_one_core_devices_a_server_each() -> None:
    spec = resolve_spec("two-server")
    assert [(d.name, d.memory_gb, d.cores) for d in spec.devices] == [("dev0", 80, [0]), ("dev1", 80, [1])]
    assert {m.name: m.server for m in spec.models} == {
        "chat-llm": "triton0", "safety-guard": "triton0", "embeddings": "triton1", "reranker": "triton1",
    }  # fmt: skip
    assert {s.name: spec.server_cores(s.name) for s in spec.servers} == {"triton0": [0], "triton1": [1]}


def test_a_fleet_without_cores_pins_nothing() -> None:
    for name in ("default", "large"):
        spec = resolve_spec(name)
        assert all(d.cores is None for d in spec.devices)
        assert [spec.server_cores(s.name) for s in spec.servers] == [None]


def test_a_server_is_pinned_to_the_union_of_its_devices_cores(tmp_path: Path) -> None:
    data = two_server_data()
    data["devices"][1]["cores"] = [3, 2]  # written in any order
    for m in data["models"]:
        m["server"] = "triton0"  # one server over both devices
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_file)
    assert spec.device("dev1").cores == [2, 3]
    assert spec.server_cores("triton0") == [0, 2, 3] and spec.server_cores("triton1") is None


# (what is broken, the field path the error must name, words the reason must contain)
BAD_CORES = [
    (["devices", 0], {"name": "gpu0", "kind": "gpu", "memory_gb": 80, "cores": [0]},
     "devices[0](gpu0).cores", "cores are for kind cpu, not gpu"),
    (["devices", 0, "cores"], [0, 2, 0], "devices[0](dev0).cores", "core(s) [0] listed twice"),
    (["devices", 0, "cores"], [-1], "devices[0](dev0).cores[0]", "greater than or equal to 0"),
    (["devices", 0, "cores"], [], "devices[0](dev0).cores", "at least 1 item"),
    (["devices", 1, "cores"], [1, 0], "devices[1].cores", "core(s) [0] already belong to device(s) 'dev0'"),
    # a pinned server would hold a device meant to share the whole host to its other device's core
    (["devices", 1, "cores"], _DELETE, "models[2](embeddings).device", "device 'dev1' names no cores"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "reason"), BAD_CORES)
def test_bad_cores_name_the_field(
    tmp_path: Path, path: list[Any], value: Any, field: str, reason: str
) -> None:
    data = two_server_data()
    if field.startswith("models[2]"):
        data["models"][2]["server"] = "triton0"  # embeddings on dev1 (no cores), served beside dev0's
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    problems = dict(err.value.problems)
    assert field in problems, err.value
    assert reason in problems[field], err.value


def test_an_attached_server_cannot_be_pinned(tmp_path: Path) -> None:
    data = two_server_data()
    data["servers"][1] = {
        "name": "triton1", "http_url": "http://127.0.0.1:8000", "grpc_url": "127.0.0.1:8001",
        "metrics_url": "http://127.0.0.1:8002/metrics",
    }  # fmt: skip
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    problems = dict(err.value.problems)
    assert "cannot be pinned" in problems["models[2](embeddings).device"], err.value
    del data["devices"][1]["cores"]  # the attached server's device shares the host: fine
    spec_file.write_text(yaml.safe_dump(data))
    assert load_spec(spec_file).server_cores("triton1") is None


def _pipeline_data() -> dict[str, Any]:
    import yaml

    from domain.spec import embedded_spec_path

    return yaml.safe_load(embedded_spec_path("pipeline").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "path", "why"),
    [
        (
            lambda s: s["steps"][0].update(model="nope"),
            "source.ensemble.steps[0].model",
            "unknown model 'nope'",
        ),
        (lambda s: s["steps"][1]["input_map"].update(GATE="later"), "", "written but never read"),
        (
            lambda s: s.update(outputs=["nothing"]),
            "source.ensemble.outputs[0]",
            "no step writes tensor 'nothing'",
        ),
        (
            lambda s: s["steps"].reverse(),
            "source.ensemble.steps[0].input_map.GATE",
            "written by this or a later step",
        ),
    ],
)
def test_a_bad_ensemble_names_the_field(change: Any, path: str, why: str) -> None:
    data = _pipeline_data()
    pipeline = next(m for m in data["models"] if m["name"] == "chat-pipeline")
    change(pipeline["source"]["ensemble"])
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any("](chat-pipeline)." in p and p.endswith(path) and why in w for p, w in err.value.problems), (
        err.value.problems
    )


def test_an_ensemble_holds_no_memory_and_no_knobs_and_streams_with_its_steps() -> None:
    data = _pipeline_data()
    pipeline = next(m for m in data["models"] if m["name"] == "chat-pipeline")
    pipeline.update(memory_gb_per_instance=1, knobs={"instances": 2}, streaming=False)
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    whys = {p.split(").", 1)[1]: w for p, w in err.value.problems}
    assert "holds no memory" in whys["memory_gb_per_instance"]
    assert "no knobs of its own" in whys["knobs"]
    assert "a step streams" in whys["streaming"]
    plain = _pipeline_data()
    plain["models"][0]["memory_gb_per_instance"] = 0
    with pytest.raises(
        SpecError, match=r"models\[0\]\(safety-guard\).memory_gb_per_instance: Input should be greater than 0"
    ):
        parse_spec(plain)
