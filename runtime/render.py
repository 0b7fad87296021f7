"""Model configurations: a base config (the built-in's or the user's config.pbtxt, or a TensorRT-LLM
config built here) with the spec's knobs laid over it, as typed `ModelConfig` protobufs.

Nothing here is a string template: configs are built and read with tritonclient's
`model_config_pb2` and protobuf's `text_format` / `json_format`, so what is written is exactly
what Triton parses, and what Triton reports can be read back into knobs.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import serialize_byte_tensor

from domain.spec import ComputePriority, DeviceSpec, FleetSpec, Knobs, ModelSpec
from runtime.words import WORDS

ModelConfig = mc.ModelConfig


def builtin_dir(name: str) -> Path:
    return Path(str(resources.files("runtime") / "demo_models" / name))


def parse_pbtxt(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{source}: {exc}") from None


def to_pbtxt(config: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def to_json(config: mc.ModelConfig) -> str:
    """The JSON form that the model-repository API's load(config=...) takes."""
    return str(json_format.MessageToJson(config, preserving_proto_field_name=True))


def from_json(data: str | dict[str, object]) -> mc.ModelConfig:
    """A config as Triton reports it (get_model_config(as_json=True)) back into a ModelConfig."""
    text = data if isinstance(data, str) else json.dumps(data)
    return json_format.Parse(text, mc.ModelConfig(), ignore_unknown_fields=True)


def base_config(model: ModelSpec) -> mc.ModelConfig:
    """The model's config before slatune's knobs: from the built-in, the user's repository, or
    the standard TensorRT-LLM in-flight batching model."""
    src = model.source
    if src.builtin is not None:
        path = builtin_dir(src.builtin) / "config.pbtxt"
        return parse_pbtxt(path.read_text(), str(path))
    if src.repository is not None:
        path = src.repository / model.name / "config.pbtxt"
        if not path.is_file():
            raise FileNotFoundError(
                f"model {model.name!r}: no {path}; source.repository must be the repository folder "
                f"that holds {model.name}/config.pbtxt"
            )
        return parse_pbtxt(path.read_text(), str(path))
    assert src.engine_dir is not None
    return tensorrtllm_config(src.engine_dir)


# In-flight batching settings of the TensorRT-LLM backend that slatune sets by default; a model's
# spec `parameters` override them.
TRTLLM_DEFAULTS = {
    "gpt_model_type": "inflight_fused_batching",
    "batch_scheduler_policy": "guaranteed_no_evict",
    "kv_cache_free_gpu_mem_fraction": "0.85",
    "enable_chunked_context": "true",
    "exclude_input_in_output": "true",
}


def tensorrtllm_config(engine_dir: Path, max_batch_size: int = 64) -> mc.ModelConfig:
    """The `tensorrt_llm` model of NVIDIA's tensorrtllm_backend, decoupled for streaming."""
    cfg = mc.ModelConfig(backend="tensorrtllm", max_batch_size=max_batch_size)
    cfg.model_transaction_policy.decoupled = True
    for name, dtype, dims, optional in (
        ("input_ids", mc.TYPE_INT32, [-1], False),
        ("input_lengths", mc.TYPE_INT32, [1], False),
        ("request_output_len", mc.TYPE_INT32, [1], False),
        ("end_id", mc.TYPE_INT32, [1], True),
        ("pad_id", mc.TYPE_INT32, [1], True),
        ("streaming", mc.TYPE_BOOL, [1], True),
        ("temperature", mc.TYPE_FP32, [1], True),
    ):
        inp = cfg.input.add(name=name, data_type=dtype, dims=dims, optional=optional)
        if dims == [1]:
            inp.reshape.SetInParent()  # reshape { shape: [ ] }: a scalar per request
    for name, dtype, dims in (
        ("output_ids", mc.TYPE_INT32, [-1, -1]),
        ("sequence_length", mc.TYPE_INT32, [-1]),
    ):
        cfg.output.add(name=name, data_type=dtype, dims=dims)
    cfg.parameters["gpt_model_path"].string_value = str(engine_dir)
    for key, value in TRTLLM_DEFAULTS.items():
        cfg.parameters[key].string_value = value
    return cfg


def render(model: ModelSpec, knobs: Knobs, device: DeviceSpec, *, warmup: bool = True) -> mc.ModelConfig:
    """The full config Triton should run for `model` with `knobs`.

    `warmup=False` drops the base config's `model_warmup` samples. Only benchmarks do that, to
    show what warmup prevents: without it the first batch a reloaded model serves runs cold (50x
    slower for the guard), requests queue behind it, and those with a short queue timeout fail."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(base_config(model))
    cfg.name = model.name
    if not warmup:
        del cfg.model_warmup[:]
    for key, value in model.parameters.items():
        cfg.parameters[key].string_value = value
    if cfg.platform == "ensemble":  # a user's own ensemble: its steps carry the knobs
        return cfg
    set_knobs(cfg, knobs, device, model.backend)
    return cfg


def render_models(
    spec: FleetSpec, models: Sequence[ModelSpec], *, warmup: bool = True
) -> dict[str, mc.ModelConfig]:
    """The configs of `models` at their spec knobs: the ensembles' from their steps', after them."""
    out = {
        m.name: render(m, m.knobs, spec.device(m.device), warmup=warmup)
        for m in models
        if m.source.ensemble is None
    }
    for m in models:
        if m.source.ensemble is not None:
            steps = {s.model: out.get(s.model) or render(spec.model(s.model), spec.model(s.model).knobs,
                     spec.device(spec.model(s.model).device)) for s in m.source.ensemble.steps}  # fmt: skip
            out[m.name] = render_ensemble(m, steps)
    return out


def render_ensemble(model: ModelSpec, steps: Mapping[str, mc.ModelConfig]) -> mc.ModelConfig:
    """The `platform: ensemble` config of `model` from its steps' configs (`steps`, by model name):
    each ensemble input and output takes the type and shape of the step tensor it maps to; the
    ensemble batches no more than its smallest step; it streams when a step does."""
    ens = model.source.ensemble
    assert ens is not None
    cfg = mc.ModelConfig(name=model.name, platform="ensemble")
    cfg.max_batch_size = min(steps[s.model].max_batch_size for s in ens.steps)
    if any(steps[s.model].model_transaction_policy.decoupled for s in ens.steps):
        cfg.model_transaction_policy.decoupled = True
    for tensor in ens.inputs():
        readers = [
            (inp, name) for s in ens.steps for name, t in s.input_map.items() if t == tensor
            for inp in steps[s.model].input if inp.name == name
        ]  # fmt: skip
        if not readers:
            raise ValueError(f"ensemble {model.name!r}: no step model has the input that reads {tensor!r}")
        first = readers[0][0]
        cfg.input.add(
            name=tensor,
            data_type=first.data_type,
            dims=first.dims,
            optional=all(i.optional for i, _ in readers),
        )
    for tensor in ens.outputs:
        writer = next(
            out for s in ens.steps for name, t in s.output_map.items() if t == tensor
            for out in steps[s.model].output if out.name == name
        )  # fmt: skip
        cfg.output.add(name=tensor, data_type=writer.data_type, dims=writer.dims)
    for s in ens.steps:
        step = cfg.ensemble_scheduling.step.add(model_name=s.model, model_version=-1)
        for key, value in s.input_map.items():
            step.input_map[key] = value
        for key, value in s.output_map.items():
            step.output_map[key] = value
    return cfg


PRIORITY: dict[ComputePriority, int] = {
    "default": mc.ModelOptimizationPolicy.PRIORITY_DEFAULT,
    "max": mc.ModelOptimizationPolicy.PRIORITY_MAX,
    "min": mc.ModelOptimizationPolicy.PRIORITY_MIN,
}
"""The compute priority knob as Triton's `optimization.priority`."""


def set_knobs(cfg: mc.ModelConfig, knobs: Knobs, device: DeviceSpec, backend: str) -> None:
    """Lay the knobs over a config in place: dynamic batching and its queue policy, one instance
    group with its rate limiter."""
    if knobs.max_batch_size:
        cfg.max_batch_size = knobs.max_batch_size
    cfg.optimization.priority = PRIORITY[knobs.compute_priority]
    if knobs.compute_priority == "default" and cfg.optimization == mc.ModelOptimizationPolicy():
        cfg.ClearField("optimization")
    batching = cfg.dynamic_batching
    batching.max_queue_delay_microseconds = knobs.max_queue_delay_us
    if knobs.preferred_batch_sizes != _preferred(cfg):  # Triton's own [max_batch_size] is none
        del batching.preferred_batch_size[:]
        batching.preferred_batch_size.extend(knobs.preferred_batch_sizes)
    policy = batching.default_queue_policy
    policy.max_queue_size = knobs.max_queue_size
    policy.default_timeout_microseconds = knobs.queue_timeout_us
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    del cfg.instance_group[:]
    group = cfg.instance_group.add(count=knobs.instances)
    if device.kind == "gpu" and backend != "tensorrtllm":
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.append(device.index)
    else:
        # TensorRT-LLM runs one CPU-side instance that drives the GPU(s) itself.
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    if backend == "tensorrtllm" and device.kind == "gpu":
        cfg.parameters["gpu_device_ids"].string_value = str(device.index)
    group.rate_limiter.priority = knobs.priority
    for name, count in sorted(knobs.resources.items()):
        group.rate_limiter.resources.add(name=name, count=count)


def knobs_of(cfg: mc.ModelConfig) -> Knobs:
    """Read the knobs back from a config, e.g. as Triton reports it for a running model."""
    groups = list(cfg.instance_group)
    resources_: dict[str, int] = {}
    priority = 1
    if groups:
        priority = groups[0].rate_limiter.priority or 1
        resources_ = {r.name: r.count for r in groups[0].rate_limiter.resources}
    policy = cfg.dynamic_batching.default_queue_policy
    return Knobs(
        max_queue_delay_us=cfg.dynamic_batching.max_queue_delay_microseconds,
        instances=sum(g.count for g in groups) or 1,
        priority=priority,
        resources=resources_,
        max_queue_size=policy.max_queue_size,
        queue_timeout_us=policy.default_timeout_microseconds,
        compute_priority=next(k for k, v in PRIORITY.items() if v == cfg.optimization.priority),
        max_batch_size=cfg.max_batch_size,
        preferred_batch_sizes=_preferred(cfg),
    )


def _preferred(cfg: mc.ModelConfig) -> tuple[int, ...]:
    """The preferred batch sizes; Triton reports [max_batch_size] when none were given, which
    asks nothing more of the batcher than no preference does."""
    sizes = tuple(cfg.dynamic_batching.preferred_batch_size)
    return () if sizes == (cfg.max_batch_size,) else sizes


def instance_groups_only(old: mc.ModelConfig, new: mc.ModelConfig) -> bool:
    """True when the two configs differ in their instance groups alone: Triton then adds or
    removes instances in place instead of reloading the model."""
    a, b = mc.ModelConfig(), mc.ModelConfig()
    a.CopyFrom(old)
    b.CopyFrom(new)
    del a.instance_group[:]
    del b.instance_group[:]
    return a == b and list(old.instance_group) != list(new.instance_group)


def write_model(repo: Path, model: ModelSpec, config: mc.ModelConfig) -> Path:
    """Write `<repo>/<model>/config.pbtxt` and the model's version folder (copied for built-ins,
    linked for a user's repository and engines, which may be large)."""
    target = repo / model.name
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(to_pbtxt(config))
    src = model.source
    if src.builtin is not None:
        version = target / "1"
        version.mkdir(exist_ok=True)
        shutil.copyfile(builtin_dir(src.builtin) / "model.py", version / "model.py")
        data = warmup_data(config)
        if data:
            (target / "warmup").mkdir(exist_ok=True)
            for name, blob in data.items():
                (target / "warmup" / name).write_bytes(blob)
    elif src.repository is not None:
        for entry in (src.repository / model.name).iterdir():
            link = target / entry.name
            if entry.name != "config.pbtxt" and not link.exists():
                link.symlink_to(entry.resolve())
    else:  # an engine (the backend reads it from the config), or an ensemble: an empty version
        (target / "1").mkdir(exist_ok=True)
    return target


def warmup_data(config: mc.ModelConfig) -> dict[str, bytes]:
    """Data files for the config's warmup samples: for each text input read from a file, one batch
    item of prompt-like text (Triton repeats it batch_size times), serialised as Triton reads BYTES
    tensors (4-byte length, then the bytes)."""
    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    for sample in config.model_warmup:
        for inp in sample.inputs.values():
            if inp.input_data_file and inp.data_type == mc.TYPE_STRING:
                count = math.prod(inp.dims)
                texts = np.array(
                    [" ".join(rng.choice(WORDS, 48)).encode() for _ in range(count)], dtype=object
                )
                out[inp.input_data_file] = serialize_byte_tensor(texts).item()
    return out


def write_config(repo: Path, config: mc.ModelConfig) -> None:
    """Keep the on-disk config in step with the applied one, so a restarted server comes back
    with the last applied configuration."""
    path = repo / config.name / "config.pbtxt"
    tmp = path.with_suffix(".pbtxt.tmp")
    tmp.write_text(to_pbtxt(config))
    tmp.replace(path)
