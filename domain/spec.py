"""The fleet spec: one YAML file naming devices, Triton servers and the models they serve.

Everything slatune does starts from a validated spec, so a bad spec must fail before any process
starts, with the file, the field path and the reason. Field-level rules live on the pydantic models;
rules that relate fields to each other (references, ports, memory budgets, knobs within bounds) live
in `FleetSpec.problems()`, which returns every problem at once rather than the first one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from importlib import resources
from os import walk
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

_M = TypeVar("_M", bound=BaseModel)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_SPEC_BYTES = 1 << 20
"""A spec file's size limit, checked before its YAML is parsed (a 10 MB spec took a minute and
over a gigabyte to check). The default fleet is 2 KB: 1 MiB holds MAX_MODELS models of 1 KB."""
MAX_MODELS = 1000
"""Models in one spec (and devices, and servers): more than a Triton fleet serves."""
MAX_SPEC_VALUES = MAX_SPEC_BYTES // 4
"""Values (keys included) a spec may expand to, a YAML alias counted at each use, so a small file
of nested aliases cannot stand for a huge spec: MAX_MODELS models like the default fleet's
embeddings are about 55,000."""
Role = Literal["latency-critical", "bulk"]
BUILTIN_MODELS = ("chat", "embedder", "reranker", "guard")
KNOB_NAMES = (
    "max_queue_delay_us",
    "instances",
    "priority",
    "max_queue_size",
    "queue_timeout_us",
    "compute_priority",
    "max_batch_size",
)
"""The knobs that move on an integer scale (the tuner's dimensions, the guardrails' bounds and
steps); `compute_priority` by its place in `COMPUTE_PRIORITIES`. Resources and preferred batch
sizes are handled apart."""
ComputePriority = Literal["max", "default", "min"]
INT32_MAX = 2**31 - 1
"""Triton keeps batch sizes as int32."""
COMPUTE_PRIORITIES: tuple[ComputePriority, ...] = ("max", "default", "min")
"""Triton's `optimization.priority` values in the order that leaves the model less of the device:
a bound `[default, min]` lets a knob move between those two."""


class Strict(BaseModel):
    # NaN passes no bound (every comparison is false) and YAML writes it .nan: refuse it, and
    # infinity, as "a finite number" rather than with a bound's misleading reason.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Knobs(Strict):
    """The scheduling knobs of one model: what the tuner moves and `apply` changes live."""

    max_queue_delay_us: NonNegativeInt = 0
    """Dynamic batching: how long a request may wait for others to form a batch."""
    instances: PositiveInt = 1
    """Execution instances of the model (each holds memory_gb_per_instance)."""
    priority: PositiveInt = 1
    """Rate-limiter priority: a weight, 1 is scheduled most often, 2 half as often."""
    resources: dict[str, NonNegativeInt] = Field(default_factory=dict)
    """Rate-limiter resources each instance must hold to execute (e.g. {"compute": 1}); a count
    of 0 means the model does not take that resource (it is dropped)."""
    max_queue_size: NonNegativeInt = 0
    """Queue policy: requests beyond this many waiting are rejected; 0 means unbounded."""
    queue_timeout_us: NonNegativeInt = 0
    """Queue policy: a request waiting longer is rejected; 0 means no timeout."""
    compute_priority: ComputePriority = "default"
    """Triton's model-level `optimization { priority }`: the priority of the model's compute beside
    the others on its device. GPU backends (TensorRT) run its CUDA streams at high (max) or low
    (min) stream priority; on the CPU, Triton's mapping is nice 0 (max) and nice 19 (min), which
    slatune's built-in models apply to their instances' processes (at min with Linux's SCHED_IDLE
    policy too, docs/triton.md). `min` lets bulk work fill what
    latency-critical models leave without holding them up. Changing it reloads the model."""
    max_batch_size: NonNegativeInt = Field(default=0, le=INT32_MAX)
    """The largest batch Triton forms, and the largest request it accepts (a client batch above it
    fails); 0: the model's own config. Changing it reloads the model."""
    preferred_batch_sizes: tuple[Annotated[PositiveInt, Field(le=INT32_MAX)], ...] = Field(
        default=(), max_length=16
    )
    """Dynamic batching's preferred batch sizes (each at most `max_batch_size`): the batcher sends a
    batch at once when it reaches one, rather than waiting out the queue delay for a bigger one."""

    @field_validator("resources")
    @classmethod
    def _drop_zero(cls, value: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in sorted(value.items()) if v > 0}

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Knobs:
        if self.max_batch_size and any(b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes {list(self.preferred_batch_sizes)} must be at most "
                f"max_batch_size {self.max_batch_size}"
            )
        return self

    def value(self, knob: str) -> int:
        """A knob of `KNOB_NAMES` on its integer scale."""
        if knob == "compute_priority":
            return COMPUTE_PRIORITIES.index(self.compute_priority)
        return int(getattr(self, knob))

    def with_values(self, values: Mapping[str, Any]) -> Knobs:
        """These knobs with `values` laid over them, `compute_priority` given by name or place."""
        update = dict(values)
        if isinstance(update.get("compute_priority"), int):
            update["compute_priority"] = COMPUTE_PRIORITIES[update["compute_priority"]]
        return Knobs.model_validate({**self.model_dump(), **update})

    def resolved(self, running: Knobs) -> Knobs:
        """A `max_batch_size` of 0 (the model's own) as the model runs it, so that comparing with
        what runs compares values."""
        if self.max_batch_size or not running.max_batch_size:
            return self
        return self.with_values({"max_batch_size": running.max_batch_size})


class IntRange(Strict):
    """An inclusive range, written `[low, high]` in YAML."""

    low: int
    high: int

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            if len(data) != 2:
                raise ValueError("a range is written [low, high]")
            return {"low": data[0], "high": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.low < 0:
            raise ValueError(f"low {self.low} is negative")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


class Bounds(Strict):
    """Where the tuner may move each knob. A knob without bounds stays at its starting value."""

    max_queue_delay_us: IntRange | None = None
    instances: IntRange | None = None
    priority: IntRange | None = None
    max_queue_size: IntRange | None = None
    queue_timeout_us: IntRange | None = None
    compute_priority: IntRange | None = None
    """Written by name in the order of `COMPUTE_PRIORITIES`, e.g. `[default, min]`; kept as places."""
    max_batch_size: IntRange | None = None
    """Keep its low at or above the largest batch a client sends: a request above it fails."""
    resources: dict[str, IntRange] = Field(default_factory=dict)

    @field_validator("compute_priority", mode="before")
    @classmethod
    def _priority_places(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            unknown = [v for v in value if v not in COMPUTE_PRIORITIES]
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not one of {', '.join(COMPUTE_PRIORITIES)}")
            return [COMPUTE_PRIORITIES.index(v) for v in value]
        return value


DEFAULT_SLO_WINDOW_S = 60.0
DEFAULT_SLO_OBJECTIVE = 0.99
MAX_SLO_WINDOW_S = 86_400.0
"""An SLA judged over more than a day is not a rolling latency target any more."""


class Sla(Strict):
    metric: Literal["ttft_p99", "latency_p99"]
    """ttft_p99: time to first token (streaming models); latency_p99: whole-request latency."""
    target_ms: PositiveFloat
    window_s: PositiveFloat = Field(default=DEFAULT_SLO_WINDOW_S, le=MAX_SLO_WINDOW_S)
    """The rolling window the p99 is judged over: "p99 over the last 60 s within target"."""
    objective: float = Field(default=DEFAULT_SLO_OBJECTIVE, gt=0.0, lt=1.0)
    """The fraction of requests that must be within target (0.99: 1 in 100 may miss, the error
    budget). Below 1: an objective of 1 leaves no budget to spend."""

    def value_of(self, *, p99_ms: float | None, ttft_p99_ms: float | None) -> float | None:
        """The figure this SLA judges, out of a measurement's latency and TTFT p99."""
        return ttft_p99_ms if self.metric == "ttft_p99" else p99_ms

    def problem(self, streaming: bool) -> tuple[str, str] | None:
        """Why this SLA cannot belong to a model (field, reason), or None: the one rule the spec
        and the API share."""
        if self.metric == "ttft_p99" and not streaming:
            return ("metric", "ttft_p99 is for streaming models; use latency_p99")
        return None


class Step(Strict):
    """One step of an ensemble: a model of the fleet, its inputs taken from the ensemble's tensors
    and its outputs given to them."""

    model: str
    input_map: dict[str, str] = Field(min_length=1)
    """The step model's input name -> the ensemble tensor it reads (an ensemble input, or an earlier
    step's output)."""
    output_map: dict[str, str] = Field(min_length=1)
    """The step model's output name -> the ensemble tensor it writes."""


class Ensemble(Strict):
    """A pipeline Triton runs server-side (`platform: ensemble`): each step runs once its inputs are
    ready, tensors pass in memory. The ensemble's inputs are the tensors no step writes; their types
    and shapes, and the outputs', come from the step models' configs."""

    steps: list[Step] = Field(min_length=1, max_length=16)
    outputs: list[str] = Field(min_length=1)
    """The tensors returned to the client."""

    def inputs(self) -> list[str]:
        written = {t for s in self.steps for t in s.output_map.values()}
        seen: dict[str, None] = {}
        for s in self.steps:
            for t in s.input_map.values():
                if t not in written:
                    seen.setdefault(t)
        return list(seen)


class Source(Strict):
    """Where a model comes from: exactly one of a built-in demo model, a user's model repository
    (the folder holding `<model name>/config.pbtxt` and its version folders), a TensorRT-LLM
    engine directory, or an ensemble of the fleet's models."""

    builtin: Literal["chat", "embedder", "reranker", "guard"] | None = None
    repository: Path | None = None
    engine_dir: Path | None = None
    ensemble: Ensemble | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        kinds = ("builtin", "repository", "engine_dir", "ensemble")
        given = [k for k in kinds if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(kinds)} (got {given or 'none'})")
        return self


class DeviceSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["cpu", "gpu"]
    memory_gb: PositiveFloat
    """The memory budget models on this device may use, instances x memory per instance."""
    index: NonNegativeInt = 0
    """The GPU's index on its host (kind gpu only)."""
    cores: list[NonNegativeInt] | None = Field(default=None, min_length=1, max_length=4096)
    """Kind cpu only: the host cores (as numbered by the kernel) this device is. A server slatune
    starts is pinned to the cores of its models' devices (its python backend stubs inherit the
    pinning), so devices are apart for real: one device's load does not take another's cores.
    Without cores a cpu device shares the whole host. Whether the cores exist is checked when the
    server starts, on the host it starts on."""

    @field_validator("cores")
    @classmethod
    def _cpu_cores(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is None:
            return value
        if info.data.get("kind", "cpu") != "cpu":  # a bad kind is named by its own error
            raise ValueError(f"cores are for kind cpu, not {info.data['kind']}")
        if len(set(value)) != len(value):
            raise ValueError(f"core(s) {sorted({c for c in value if value.count(c) > 1})} listed twice")
        return sorted(value)


class ServerSpec(Strict):
    """A Triton server: started by slatune (ports optional, picked free on 127.0.0.1), or an
    existing one to attach to by URL (it must run with --model-control-mode=explicit)."""

    name: str = Field(pattern=NAME_PATTERN)
    http_port: PositiveInt | None = Field(default=None, le=65535)
    grpc_port: PositiveInt | None = Field(default=None, le=65535)
    metrics_port: PositiveInt | None = Field(default=None, le=65535)
    rate_limit_resources: dict[str, PositiveInt] = Field(default_factory=dict)
    """Totals for the rate limiter (--rate-limit-resource name:count), e.g. {"cpu": 2}."""
    http_url: str | None = None
    grpc_url: str | None = None
    metrics_url: str | None = None

    @property
    def attached(self) -> bool:
        return self.grpc_url is not None

    @model_validator(mode="after")
    def _attach_or_start(self) -> ServerSpec:
        urls = [self.http_url, self.grpc_url, self.metrics_url]
        if any(urls) and not all(urls):
            raise ValueError("an attached server needs all of http_url, grpc_url, metrics_url")
        if all(urls) and any((self.http_port, self.grpc_port, self.metrics_port)):
            raise ValueError("give ports for a server slatune starts, URLs for one it attaches to")
        return self


class ModelTemplate(Strict):
    """A model without its place: what the packing planner takes, and what it places by adding the
    server and the device (`ModelSpec`)."""

    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    source: Source
    backend: Literal["python", "tensorrtllm"] = "python"
    streaming: bool = False
    """Decoupled model that streams tokens (time to first token is its SLA metric)."""
    memory_gb_per_instance: NonNegativeFloat
    """Greater than 0, but for an ensemble (0: its steps hold the memory)."""
    sla: Sla | None = None
    knobs: Knobs = Field(default_factory=Knobs)
    bounds: Bounds = Field(default_factory=Bounds)
    parameters: dict[str, str] = Field(default_factory=dict)
    """Extra config.pbtxt `parameters` (demo model sizes, TensorRT-LLM batching settings)."""


class ModelSpec(ModelTemplate):
    server: str
    device: str


class FleetSpec(Strict):
    name: str = Field(default="fleet", pattern=NAME_PATTERN)
    tritonserver: Path | None = None
    """The tritonserver binary; default: the one bundled with nvidia-pytriton."""
    devices: list[DeviceSpec] = Field(min_length=1, max_length=MAX_MODELS)
    servers: list[ServerSpec] = Field(min_length=1, max_length=MAX_MODELS)
    models: list[ModelSpec] = Field(min_length=1, max_length=MAX_MODELS)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"unknown model {name!r} (fleet has: {', '.join(self.model_names)})")

    def server(self, name: str) -> ServerSpec:
        return next(s for s in self.servers if s.name == name)

    def device(self, name: str) -> DeviceSpec:
        return next(d for d in self.devices if d.name == name)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def models_on(self, server: str) -> list[ModelSpec]:
        return [m for m in self.models if m.server == server]

    def server_cores(self, server: str) -> list[int] | None:
        """The host cores a server slatune starts is pinned to: the union of the cores of its
        models' devices; None (not pinned) when none of those devices names cores."""
        devices = {d.name: d for d in self.devices}
        cores = {
            c for m in self.models_on(server) if (d := devices.get(m.device)) and d.cores for c in d.cores
        }
        return sorted(cores) or None

    def problems(self) -> list[tuple[str, str]]:
        """Every cross-field problem as (field path, reason); empty when the spec is sound."""
        out: list[tuple[str, str]] = []
        named: tuple[tuple[str, list[str]], ...] = (
            ("devices", [d.name for d in self.devices]),
            ("servers", [s.name for s in self.servers]),
            ("models", self.model_names),
        )
        for kind, names in named:
            counts = Counter(names)
            for i, name in enumerate(names):
                if counts[name] > 1:
                    out.append((f"{kind}[{i}].name", f"duplicate name {name!r}"))
        out += _port_problems(self.servers)
        out += _core_problems(self.devices)
        devices = {d.name: d for d in self.devices}
        servers = {s.name: s for s in self.servers}
        for i, m in enumerate(self.models):
            at = f"models[{i}]"
            if m.server not in servers:
                out.append((f"{at}.server", f"unknown server {m.server!r} (known: {', '.join(servers)})"))
            if m.device not in devices:
                out.append((f"{at}.device", f"unknown device {m.device!r} (known: {', '.join(devices)})"))
            out += [(f"{at}.{path}", why) for path, why in model_problems(m, devices.get(m.device))]
            if m.server in servers:
                out += [(f"{at}.{path}", why) for path, why in knob_problems(servers[m.server], m.knobs)]
            if m.server in servers and m.device in devices:
                out += [
                    (f"{at}.device", why)
                    for why in self._pinning_problems(servers[m.server], devices[m.device])
                ]
        out += self._ensemble_problems()
        steps = {s.model for m in self.models if m.source.ensemble and m.sla for s in m.source.ensemble.steps}
        for i, m in enumerate(self.models):
            if (
                m.role == "latency-critical"
                and m.sla is None
                and m.source.ensemble is None
                and m.name not in steps
            ):
                out.append(
                    (
                        f"models[{i}].sla",
                        "a latency-critical model needs an SLA (or to be a step of a pipeline that has one)",
                    )
                )
        knobs = {m.name: m.knobs for m in self.models}
        out += [("devices", why) for why in memory_problems(self, knobs)]
        return out

    def _ensemble_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        by_name = {m.name: m for m in self.models}
        for i, m in enumerate(self.models):
            ens = m.source.ensemble
            if ens is None:
                continue
            at = f"models[{i}].source.ensemble"
            written: set[str] = set()
            streaming = False
            for j, step in enumerate(ens.steps):
                target = by_name.get(step.model)
                if target is None:
                    out.append((f"{at}.steps[{j}].model", f"unknown model {step.model!r}"))
                    continue
                if target.source.ensemble is not None:
                    out.append((f"{at}.steps[{j}].model", f"{step.model!r} is an ensemble itself"))
                if target.server != m.server:
                    out.append(
                        (
                            f"{at}.steps[{j}].model",
                            f"{step.model!r} runs on server {target.server!r}, the ensemble on {m.server!r}",
                        )
                    )
                streaming |= target.streaming
                later = {t for s in ens.steps[j:] for t in s.output_map.values()}
                for name, tensor in step.input_map.items():
                    if tensor in later - written:
                        out.append(
                            (
                                f"{at}.steps[{j}].input_map.{name}",
                                f"tensor {tensor!r} is written by this or a later step",
                            )
                        )
                written |= set(step.output_map.values())
            for k, tensor in enumerate(ens.outputs):
                if tensor not in written:
                    out.append((f"{at}.outputs[{k}]", f"no step writes tensor {tensor!r}"))
            read = {t for s in ens.steps for t in s.input_map.values()} | set(ens.outputs)
            for tensor in sorted(written - read):
                out.append(
                    (
                        f"{at}",
                        f"tensor {tensor!r} is written but never read (Triton refuses an unused tensor)",
                    )
                )
            if streaming != m.streaming:
                why = "a step streams, so the ensemble must" if streaming else "no step streams"
                out.append((f"models[{i}].streaming", why))
        return out

    def _pinning_problems(self, server: ServerSpec, device: DeviceSpec) -> list[str]:
        """Why a model of `server` cannot sit on `device` as far as cores go: a server slatune
        attached to cannot be pinned, and a pinned server would hold a cpu device without cores
        (meant to share the whole host) to its other devices' cores."""
        if server.attached and device.cores:
            why = f"server {server.name!r} is attached to, not started by slatune: it cannot be pinned"
            return [f"device {device.name!r} has cores, but {why}"]
        pinned = None if server.attached else self.server_cores(server.name)
        if device.kind == "cpu" and device.cores is None and pinned:
            fix = f"give {device.name!r} cores, or serve this model from another server"
            return [
                f"device {device.name!r} names no cores, but server {server.name!r} is pinned to "
                f"cores {pinned} of its other devices: {fix}"
            ]
        return []


def model_problems(m: ModelTemplate, device: DeviceSpec | None) -> list[tuple[str, str]]:
    """Problems of one model on its own: backend/source fit, SLA, knobs within bounds."""
    out: list[tuple[str, str]] = []
    if m.backend == "tensorrtllm" and m.source.engine_dir is None:
        out.append(("source", "a tensorrtllm model needs source.engine_dir"))
    if m.backend == "python" and m.source.engine_dir is not None:
        out.append(("source", "engine_dir is for backend tensorrtllm"))
    if m.backend == "tensorrtllm" and device is not None and device.kind != "gpu":
        out.append(("backend", f"tensorrtllm needs a gpu device, {device.name!r} is {device.kind}"))
    if m.source.ensemble is None and m.memory_gb_per_instance <= 0:
        out.append(("memory_gb_per_instance", "Input should be greater than 0 (only an ensemble holds none)"))
    if m.source.ensemble is not None:
        if m.memory_gb_per_instance > 0:
            out.append(
                ("memory_gb_per_instance", "an ensemble holds no memory of its own (its steps do): give 0")
            )
        if m.knobs != Knobs() or m.bounds != Bounds():
            out.append(("knobs", "an ensemble has no knobs of its own: tune its steps"))
    if m.role == "latency-critical" and m.sla is None and m.source.ensemble is not None:
        out.append(("sla", "a latency-critical model needs an SLA"))
    if m.sla is not None and (bad := m.sla.problem(m.streaming)) is not None:
        out.append((f"sla.{bad[0]}", bad[1]))
    for path, why in knob_bound_problems(m.knobs, m.bounds):
        out.append((path, why))
    return out


def knob_problems(server: ServerSpec, knobs: Knobs) -> list[tuple[str, str]]:
    """The hard limits a model's `knobs` must keep on its `server`, as (field path, reason): no
    instance may ask for more of a rate-limiter resource than the server has in total. No guardrail
    moves a limit: the spec, every proposal and `Fleet.validate` check this one rule."""
    return [
        (f"knobs.resources.{res}", f"asks for {count} but server {server.name!r} has {total}")
        for res, count in knobs.resources.items()
        if (total := server.rate_limit_resources.get(res)) is not None and count > total
    ]


def knob_bound_problems(knobs: Knobs, bounds: Bounds) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in KNOB_NAMES:
        rng: IntRange | None = getattr(bounds, name)
        if rng is None or (name == "max_batch_size" and knobs.max_batch_size == 0):
            continue  # the model's own batch size is not known here; the runtime checks it
        if knobs.value(name) not in rng:
            show = COMPUTE_PRIORITIES if name == "compute_priority" else None
            value, low, high = (
                (getattr(knobs, name), rng.low, rng.high)
                if show is None
                else (knobs.compute_priority, show[rng.low], show[rng.high])
            )
            out.append((f"knobs.{name}", f"{value} is outside bounds [{low}, {high}]"))
    for res, rng in bounds.resources.items():
        value = knobs.resources.get(res, 0)
        if value not in rng:
            out.append((f"knobs.resources.{res}", f"{value} is outside bounds [{rng.low}, {rng.high}]"))
    return out


def memory_problems(spec: FleetSpec, knobs: Mapping[str, Knobs]) -> list[str]:
    """Devices whose models' instances x memory per instance exceed the device's budget."""
    used = device_memory_used(spec, knobs)
    out = []
    for d in spec.devices:
        if used[d.name] > d.memory_gb + 1e-9:
            parts = ", ".join(
                f"{m.name} {knobs[m.name].instances}x{m.memory_gb_per_instance:g}"
                for m in spec.models
                if m.device == d.name
            )
            out.append(
                f"device {d.name!r}: instances need {used[d.name]:g} GB but the budget is "
                f"{d.memory_gb:g} GB ({parts})"
            )
    return out


def device_memory_used(spec: FleetSpec, knobs: Mapping[str, Knobs]) -> dict[str, float]:
    used: dict[str, float] = defaultdict(float)
    for d in spec.devices:
        used[d.name] = 0.0
    for m in spec.models:
        used[m.device] += knobs[m.name].instances * m.memory_gb_per_instance
    return dict(used)


def _core_problems(devices: Iterable[DeviceSpec]) -> list[tuple[str, str]]:
    """A core may be one device's only: devices apart share no core."""
    owner: dict[int, str] = {}
    out = []
    for i, d in enumerate(devices):
        shared = [c for c in d.cores or () if c in owner]
        if shared:
            others = ", ".join(sorted({repr(owner[c]) for c in shared}))
            out.append((f"devices[{i}].cores", f"core(s) {shared} already belong to device(s) {others}"))
        for c in d.cores or ():
            owner.setdefault(c, d.name)
    return out


def _port_problems(servers: Iterable[ServerSpec]) -> list[tuple[str, str]]:
    seen: dict[int, str] = {}
    out = []
    for i, s in enumerate(servers):
        for field in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(s, field)
            if port is None:
                continue
            where = f"servers[{i}].{field}"
            if port in seen:
                out.append((where, f"port {port} is already used by {seen[port]}"))
            else:
                seen[port] = where
    return out


class SpecError(ValueError):
    """A fleet spec that cannot be used; the message names the file, each field path and why."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"fleet spec {source} is invalid:"]
        lines += [f"  {path}: {why}" for path, why in problems]
        super().__init__("\n".join(lines))


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Turn pydantic's location tuple into `models[1](chat-llm).knobs.instances`."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f"({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def validated(cls: type[_M], data: Any, source: str) -> _M:
    """`cls` validated from `data`, or SpecError naming every bad field by its path."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [(_loc(e["loc"], data), e["msg"]) for e in exc.errors()]
        raise SpecError(source, problems) from None


def parse_spec(data: Any, source: str = "<spec>") -> FleetSpec:
    """Validate a spec already read into Python objects; raise SpecError listing every problem."""
    spec = validated(FleetSpec, data, source)
    problems = spec.problems()
    if problems:
        # Name models by their index and name, as field errors do.
        named = []
        for path, why in problems:
            if path.startswith("models["):
                idx = int(path[len("models[") : path.index("]")])
                path = path.replace(f"models[{idx}]", f"models[{idx}]({spec.models[idx].name})", 1)
            named.append((path, why))
        raise SpecError(source, named)
    return spec


def load_spec(path: str | Path, *, check_files: bool = True) -> FleetSpec:
    """Read and validate a fleet spec file. Relative source paths are taken from the file's folder.
    With `check_files` (the default) the sources must also be usable here: what `fleet up` would
    read exists (see `source_problems`); without, the spec is checked as data only (a template for
    another host, as the embedded gpu-trtllm fleet is)."""
    path = Path(path)
    data = read_yaml_mapping(path, "devices, servers, models")
    spec = _resolve_paths(parse_spec(data, str(path)), path.parent)
    if check_files and (problems := source_problems(spec)):
        raise SpecError(str(path), problems)
    return spec


def read_yaml_mapping(path: Path, expected: str) -> dict[str, Any]:
    """A YAML file of at most MAX_SPEC_BYTES holding a mapping (of the `expected` keys), read with a
    safe loader and refused when its aliases expand past MAX_SPEC_VALUES; SpecError otherwise."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # never more, whatever the file is
    except OSError as exc:
        raise SpecError(str(path), [("(file)", exc.strerror or str(exc))]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(path), [("(file)", f"is over the limit of {MAX_SPEC_BYTES} bytes (1 MiB)")])
    try:
        data = yaml.load(raw, Loader=_YAML_LOADER)  # a safe loader
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [("(yaml)", str(exc))]) from None
    if not isinstance(data, dict):
        raise SpecError(str(path), [("(top level)", f"expected a mapping with {expected}")])
    if _expands_past(data, MAX_SPEC_VALUES):
        raise SpecError(
            str(path),
            [("(top level)", f"expands to over {MAX_SPEC_VALUES} values (YAML aliases count at each use)")],
        )
    return data


def _resolve_paths(spec: FleetSpec, base: Path) -> FleetSpec:
    models = [m.model_copy(update={"source": resolved_source(m.source, base)}) for m in spec.models]
    return spec.model_copy(update={"models": models})


def resolved_source(src: Source, base: Path) -> Source:
    """`src` with relative repository and engine paths taken from the folder `base`."""
    if src.repository is not None and not src.repository.is_absolute():
        src = src.model_copy(update={"repository": (base / src.repository).resolve()})
    if src.engine_dir is not None and not src.engine_dir.is_absolute():
        src = src.model_copy(update={"engine_dir": (base / src.engine_dir).resolve()})
    return src


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (ten times faster), else the Python one."""


def _expands_past(data: Any, cap: int) -> bool:
    """Whether the values under `data`, counted as often as they are reached, are more than `cap`
    (stops counting there, so a billion-laughs file costs `cap` steps)."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > cap:
            return True
        if isinstance(node, dict):
            stack += node.values()
            seen += len(node)  # the keys
        elif isinstance(node, list):
            stack += node
    return False


def source_problems(spec: FleetSpec) -> list[tuple[str, str]]:
    """What `fleet up` would find missing in the models' sources, as (field path, reason): a
    repository must be a folder holding `<model name>/config.pbtxt`, with no link in the model's
    folder leading outside the repository (or nowhere); an engine_dir must be a folder."""
    out: list[tuple[str, str]] = []
    for i, m in enumerate(spec.models):
        at = f"models[{i}]({m.name}).source"
        if m.source.repository is not None:
            out += [(f"{at}.repository", why) for why in _repository_problems(m.source.repository, m.name)]
        if m.source.engine_dir is not None and not m.source.engine_dir.is_dir():
            what = "is not a folder" if m.source.engine_dir.exists() else "does not exist"
            out.append((f"{at}.engine_dir", f"{m.source.engine_dir} {what}"))
    return out


def _repository_problems(repo: Path, model: str, most: int = 3) -> list[str]:
    if not repo.exists():
        return [f"{repo} does not exist"]
    if not repo.is_dir():
        return [f"{repo} is not a folder"]
    if not (repo / model / "config.pbtxt").is_file():
        return [
            f"{repo} holds no {model}/config.pbtxt (source.repository is the folder holding "
            "<model name>/config.pbtxt and its version folders)"
        ]
    root = repo.resolve()
    links = [repo / model] if (repo / model).is_symlink() else []
    for folder, dirs, files in walk(repo / model):  # does not follow links into folders
        links += [Path(folder, name) for name in dirs + files if Path(folder, name).is_symlink()]
    out = []
    for link in links:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target, or a loop
            out.append(f"{link} is a broken link")
            continue
        if not target.is_relative_to(root):
            out.append(f"{link} leads outside the repository, to {target}")
    if len(out) > most:
        out = [*out[:most], f"and {len(out) - most} more links like these"]
    return out


EMBEDDED_FLEETS = ("default", "large", "two-server", "pipeline", "gpu-trtllm")


def embedded_spec_path(name: str = "default") -> Path:
    """Path of a spec shipped with slatune: default (one 80 GB device), large (two), two-server (two
    one-core devices, a server each), gpu-trtllm."""
    if name not in EMBEDDED_FLEETS:
        raise SpecError(
            name, [("(name)", f"no embedded fleet {name!r} (have: {', '.join(EMBEDDED_FLEETS)})")]
        )
    return Path(str(resources.files("domain") / "fleets" / f"{name}.yaml"))


def resolve_spec(spec: str | Path | None, *, check_files: bool = True) -> FleetSpec:
    """A spec from a path, an embedded fleet's name, or the embedded default when None."""
    if spec is None:
        return load_spec(embedded_spec_path("default"), check_files=check_files)
    if isinstance(spec, str) and spec in EMBEDDED_FLEETS and not Path(spec).exists():
        return load_spec(embedded_spec_path(spec), check_files=check_files)
    return load_spec(spec, check_files=check_files)
