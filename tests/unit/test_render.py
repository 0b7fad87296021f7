"""Rendering configs with model_config_pb2: knobs laid over a base config survive the round trip
through config.pbtxt text and through the JSON that Triton's load API takes and reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from domain.spec import DeviceSpec, Knobs, ModelSpec, Source, resolve_spec
from runtime import render

CPU = DeviceSpec(name="dev0", kind="cpu", memory_gb=80)
GPU = DeviceSpec(name="gpu1", kind="gpu", memory_gb=80, index=1)

KNOBS = [
    Knobs(),
    Knobs(
        max_queue_delay_us=2500,
        instances=3,
        priority=4,
        resources={"compute": 2},
        max_queue_size=32,
        queue_timeout_us=250_000,
    ),
    Knobs(instances=2, resources={"compute": 1, "mem": 3}),
    Knobs(compute_priority="min", max_batch_size=8, preferred_batch_sizes=(4, 8)),
    Knobs(compute_priority="max", preferred_batch_sizes=(2,)),
]


@pytest.mark.parametrize("knobs", KNOBS)
@pytest.mark.parametrize("model", resolve_spec(None).models, ids=lambda m: m.name)
def test_knobs_survive_pbtxt_and_json(model: ModelSpec, knobs: Knobs) -> None:
    cfg = render.render(model, knobs, CPU)
    assert cfg.name == model.name
    parsed = render.parse_pbtxt(render.to_pbtxt(cfg))
    assert parsed == cfg
    # A max batch size of 0 is the model's own: read back, it is the model's value.
    want = knobs.resolved(Knobs(max_batch_size=base_batch(model)))
    assert render.knobs_of(parsed) == want
    assert render.knobs_of(render.from_json(render.to_json(cfg))) == want


def base_batch(model: ModelSpec) -> int:
    return render.base_config(model).max_batch_size


def test_compute_priority_and_batch_sizes_render_as_triton_fields() -> None:
    model = resolve_spec(None).model("embeddings")
    cfg = render.render(model, KNOBS[3], CPU)
    assert cfg.optimization.priority == mc.ModelOptimizationPolicy.PRIORITY_MIN
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert '"priority": "PRIORITY_MIN"' in render.to_json(cfg)  # what load_model takes
    # The default leaves no optimization block behind, and the model's own batch size stays.
    plain = render.render(model, Knobs(), CPU)
    assert not plain.HasField("optimization") and plain.max_batch_size == 64


def test_rendered_queue_policy_and_instance_group() -> None:
    model = resolve_spec(None).model("embeddings")
    cfg = render.render(model, KNOBS[1], CPU)
    batching = cfg.dynamic_batching
    assert batching.max_queue_delay_microseconds == 2500
    assert batching.default_queue_policy.max_queue_size == 32
    assert batching.default_queue_policy.default_timeout_microseconds == 250_000
    assert batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    (group,) = cfg.instance_group
    assert (group.count, group.kind) == (3, mc.ModelInstanceGroup.KIND_CPU)
    assert group.rate_limiter.priority == 4
    assert [(r.name, r.count) for r in group.rate_limiter.resources] == [("compute", 2)]
    # the built-in's own parts are kept
    assert [i.name for i in cfg.input] == ["TEXT"] and cfg.max_batch_size == 64


def test_gpu_device_gets_a_gpu_instance_group() -> None:
    model = resolve_spec(None).model("embeddings")
    (group,) = render.render(model, Knobs(instances=2), GPU).instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [1]


def test_tensorrtllm_config_parses_back() -> None:
    model = resolve_spec("gpu-trtllm", check_files=False).model("chat-llm")  # a template here
    text = render.to_pbtxt(render.render(model, model.knobs, GPU))
    cfg = render.parse_pbtxt(text)
    assert cfg.backend == "tensorrtllm"
    assert cfg.model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["gpt_model_path"] == "/models/engines/chat-llm"
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5"  # the spec's override of 0.85
    assert params["gpu_device_ids"] == "1"
    (group,) = cfg.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert {i.name for i in cfg.input} >= {"input_ids", "input_lengths", "request_output_len"}


@pytest.mark.parametrize(
    ("change", "in_place"),
    [
        ({"instances": 3}, True),
        ({"priority": 2}, True),
        ({"resources": {}}, True),
        ({"max_queue_delay_us": 100}, False),
        ({"queue_timeout_us": 100}, False),
        ({"instances": 3, "max_queue_size": 4}, False),
        ({}, False),  # nothing changed: nothing to apply at all
    ],
)
def test_instance_groups_only(change: dict[str, object], in_place: bool) -> None:
    model = resolve_spec(None).model("reranker")
    old = render.render(model, model.knobs, CPU)
    new = render.render(model, model.knobs.model_copy(update=change), CPU)
    assert render.instance_groups_only(old, new) is in_place


def test_user_repository_source(tmp_path: Path) -> None:
    repo = tmp_path / "user-repo"
    (repo / "mymodel" / "1").mkdir(parents=True)
    (repo / "mymodel" / "1" / "model.py").write_text("# user's model\n")
    (repo / "mymodel" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 4\ninput { name: "X" data_type: TYPE_FP32 dims: [ 2 ] }\n'
    )
    model = ModelSpec(
        name="mymodel",
        role="bulk",
        server="s",
        device="dev0",
        source=Source(repository=repo),
        memory_gb_per_instance=1,
    )
    cfg = render.render(model, Knobs(instances=2), CPU)
    assert cfg.max_batch_size == 4 and cfg.instance_group[0].count == 2
    out = render.write_model(tmp_path / "rendered", model, cfg)
    assert (out / "1").is_symlink() and (out / "1" / "model.py").read_text() == "# user's model\n"
    assert render.parse_pbtxt((out / "config.pbtxt").read_text()) == cfg


def test_a_users_own_ensemble_from_a_repository_is_served_as_written(tmp_path: Path) -> None:
    repo = tmp_path / "user-repo"
    (repo / "pipe" / "1").mkdir(parents=True)
    written = (
        'platform: "ensemble"\nmax_batch_size: 4\ninput { name: "X" data_type: TYPE_STRING dims: [ 1 ] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'ensemble_scheduling { step { model_name: "safety-guard" model_version: -1 '
        'input_map { key: "TEXT" value: "X" } output_map { key: "UNSAFE_PROB" value: "Y" } } }\n'
    )
    (repo / "pipe" / "config.pbtxt").write_text(written)
    model = ModelSpec(
        name="pipe",
        role="bulk",
        server="s",
        device="dev0",
        source=Source(repository=repo),
        memory_gb_per_instance=1,
    )
    cfg = render.render(model, Knobs(), CPU)
    assert cfg.platform == "ensemble" and not cfg.instance_group and not cfg.HasField("dynamic_batching")
    assert cfg.ensemble_scheduling.step[0].model_name == "safety-guard" and cfg.name == "pipe"


def test_user_repository_without_the_model_says_where_it_looked(tmp_path: Path) -> None:
    model = ModelSpec(
        name="absent",
        role="bulk",
        server="s",
        device="dev0",
        source=Source(repository=tmp_path),
        memory_gb_per_instance=1,
    )
    with pytest.raises(FileNotFoundError, match=r"absent/config\.pbtxt"):
        render.render(model, Knobs(), CPU)


def test_bad_pbtxt_names_the_file() -> None:
    with pytest.raises(ValueError, match=r"my/config.pbtxt: .*"):
        render.parse_pbtxt("max_batch_size: lots", "my/config.pbtxt")


@pytest.mark.parametrize("model", resolve_spec(None).models, ids=lambda m: m.name)
def test_builtins_warm_up_from_data_files_triton_can_read(model: ModelSpec) -> None:
    """Every new instance runs warmup samples before taking traffic; their text inputs read data
    files holding one serialised batch item each (Triton repeats it batch_size times)."""
    from tritonclient.utils import deserialize_bytes_tensor

    cfg = render.render(model, model.knobs, CPU)
    assert cfg.model_warmup, "a built-in must warm up, or its first batch after a reload runs cold"
    data = render.warmup_data(cfg)
    wanted = {i.input_data_file for w in cfg.model_warmup for i in w.inputs.values()}
    assert set(data) == wanted
    for blob in data.values():
        (text,) = deserialize_bytes_tensor(blob)
        assert len(text.split()) == 48
    assert not render.render(model, model.knobs, CPU, warmup=False).model_warmup


def test_write_model_writes_the_warmup_files(tmp_path: Path) -> None:
    model = resolve_spec(None).model("reranker")
    cfg = render.render(model, model.knobs, CPU)
    out = render.write_model(tmp_path, model, cfg)
    assert sorted(p.name for p in (out / "warmup").iterdir()) == ["document_1", "query_1"]
    assert (out / "1" / "model.py").is_file()


def test_an_ensemble_renders_from_its_steps_configs() -> None:
    spec = resolve_spec("pipeline")
    configs = render.render_models(spec, spec.models)
    chat = configs["chat-pipeline"]
    assert chat.platform == "ensemble" and chat.model_transaction_policy.decoupled  # chat-llm streams
    # the smallest step's: the pipeline fleet runs its guard one prompt at a time (chat-llm: 8)
    assert chat.max_batch_size == 1
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in chat.input}
    # PROMPT feeds the guard's TEXT and chat's PROMPT, both required; MAX_TOKENS only chat's optional one
    assert inputs == {"PROMPT": (mc.TYPE_STRING, [1], False), "MAX_TOKENS": (mc.TYPE_INT32, [1], True)}
    assert [(o.name, o.data_type) for o in chat.output] == [("TOKEN", mc.TYPE_INT32)]
    steps = chat.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["safety-guard", "chat-llm"]
    assert dict(steps[1].input_map) == {"PROMPT": "PROMPT", "MAX_TOKENS": "MAX_TOKENS", "GATE": "verdict"}
    retrieval = configs["retrieval"]
    assert not retrieval.model_transaction_policy.decoupled and retrieval.max_batch_size == 32
    assert [(o.name, list(o.dims)) for o in retrieval.output] == [("SCORE", [1])]
    # Round trip: what is written is what Triton parses.
    assert render.parse_pbtxt(render.to_pbtxt(chat)) == chat
