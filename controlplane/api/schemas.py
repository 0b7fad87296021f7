"""Request and response bodies. Requests forbid unknown fields, so a misspelt knob is an error
naming it rather than a change silently ignored, and take JSON's types as the schema says: strict,
so `true` is not 1 nor "5" a number, but 5.0 is an integer (JSON Schema's). A float must be finite:
Python's JSON reader takes NaN and Infinity, which no bound would refuse with a true reason."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt

from controlplane.plane import ModelSummary
from domain.slo import SloStatus
from domain.spec import (
    DEFAULT_SLO_OBJECTIVE,
    DEFAULT_SLO_WINDOW_S,
    MAX_SLO_WINDOW_S,
    ComputePriority,
    Knobs,
    Sla,
)

MAX_ID = 2**31 - 1
"""Ids are INTEGER columns, 32-bit on PostgreSQL: a larger one is refused (422) before the database
driver fails on it."""


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integral = BeforeValidator(_integral)
"""For a strict int field: 5.0 is an integer to JSON Schema, so to the OpenAPI schema too."""
NO_NUL = r"^[^\x00]*$"
"""For a stored string: PostgreSQL's text holds no NUL character."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ErrorOut(BaseModel):
    error: str
    field: str | None = None
    """The request field that was wrong, as a dotted path (body.knobs.instances), when one was."""
    detail: list[dict[str, Any]] = Field(default_factory=list)


# ---------------------------------------------------------------- fleet
class ServerOut(BaseModel):
    name: str
    managed: bool
    grpc: str
    metrics_url: str
    ready: bool
    restarts: int


class DeviceOut(BaseModel):
    name: str
    kind: str
    memory_gb: float
    used_gb: float
    """Memory the models' instances hold at the knobs they run with."""
    models: list[str] = []
    """The placement: the models on this device..."""
    servers: list[str] = []
    """...and the servers that run them."""
    utilization: float | None = None
    """Busy share over the last 30 s (0..1), from its servers' device windows: the pinned cores'
    share for a device of cores, the host's CPU otherwise, the GPU's with a GPU; None unknown."""
    cores: list[int] | None = None
    """The host cores of a CPU device that is a set of cores."""


class VersionOut(BaseModel):
    id: int
    model: str
    knobs: Knobs
    actor: str
    reason: str
    state: str
    created_at: float
    applied_at: float | None
    error: str | None


class ModelOut(BaseModel):
    name: str
    role: str
    server: str
    device: str
    memory_gb_per_instance: float
    sla: Sla | None
    knobs: Knobs
    """What runs now, as the runtime applied it and Triton confirmed it."""
    applied: VersionOut | None
    desired: VersionOut | None
    """A configuration asked for and not applied yet, if any."""


class FleetOut(BaseModel):
    name: str
    servers: list[ServerOut]
    devices: list[DeviceOut]
    models: list[str]


class ConfigOut(BaseModel):
    model: str
    running: Knobs
    """Read back from Triton now."""
    applied: VersionOut | None
    desired: VersionOut | None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str]


# ---------------------------------------------------------------- configurations
class KnobsPatch(_In):
    """The knobs to change; the others keep their current value."""

    max_queue_delay_us: Annotated[NonNegativeInt, Integral] | None = None
    instances: Annotated[PositiveInt, Integral] | None = None
    priority: Annotated[PositiveInt, Integral] | None = None
    resources: dict[str, Annotated[NonNegativeInt, Integral]] | None = None
    """Merged into the running ones: {"compute": 0} drops compute, other resources stay."""
    max_queue_size: Annotated[NonNegativeInt, Integral] | None = None
    queue_timeout_us: Annotated[NonNegativeInt, Integral] | None = None
    compute_priority: ComputePriority | None = None
    """Triton's optimization.priority: max, default or min (bulk work that yields the device)."""
    max_batch_size: Annotated[NonNegativeInt, Integral] | None = None
    preferred_batch_sizes: list[Annotated[PositiveInt, Integral]] | None = Field(default=None, max_length=16)


class ProposalIn(_In):
    knobs: KnobsPatch
    reason: str = Field(default="", max_length=500, pattern=NO_NUL)
    dry_run: bool = False
    """Only show what would change: the diff, the memory check and the guardrails' clips."""
    wait: bool = False
    """Return once the reconciler has applied it (or failed), rather than at once."""


class RollbackIn(_In):
    version: Annotated[int, Integral] = Field(ge=1, le=MAX_ID)
    """The configuration version to go back to (see the history)."""
    reason: str = Field(default="", max_length=500, pattern=NO_NUL)
    dry_run: bool = False
    wait: bool = False


class ClipOut(BaseModel):
    knob: str
    asked: Any
    got: Any
    rule: str


class MemoryOut(BaseModel):
    device: str
    used_gb: float
    budget_gb: float
    fits: bool


class ProposalOut(BaseModel):
    model: str
    dry_run: bool
    current: Knobs
    proposed: Knobs
    """What would run: the request, clipped by the guardrails."""
    diff: dict[str, list[Any]]
    """knob -> [current, proposed], only the knobs that change."""
    clips: list[ClipOut]
    memory: MemoryOut
    refused: str | None
    version: VersionOut | None
    """The desired version recorded (None for a dry run or when nothing changes)."""


class SlaIn(_In):
    metric: Literal["ttft_p99", "latency_p99"]
    target_ms: float = Field(gt=0, le=3_600_000)
    window_s: float = Field(default=DEFAULT_SLO_WINDOW_S, gt=0, le=MAX_SLO_WINDOW_S)
    """The rolling window the p99 is judged over (the default when left out, as in a spec)."""
    objective: float = Field(default=DEFAULT_SLO_OBJECTIVE, gt=0, lt=1)
    """The fraction of requests that must be within target."""


# ---------------------------------------------------------------- metrics
class WindowOut(BaseModel):
    start: float
    end: float
    resolution_s: float
    config_version: int | None
    spans_reconfiguration: bool
    reset: bool
    requests: float
    success: float
    failures: dict[str, float]
    request_rate: float
    inference_rate: float
    avg_batch: float | None
    avg_queue_ms: float | None
    avg_compute_infer_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    pending: float


class SloOut(SloStatus):
    model: str


class SummaryOut(ModelSummary):
    knobs: Knobs
    """What the model runs with now."""


# ---------------------------------------------------------------- tuning
class TuningIn(_In):
    budget: Annotated[int, Integral] = Field(default=8, ge=2, le=200)
    """Configurations to measure, the baseline included."""
    window_s: float = Field(default=20.0, ge=2, le=3600)
    warmup_s: float = Field(default=5.0, ge=0, le=600)
    models: list[str] | None = Field(default=None, min_length=1)
    """Models whose knobs are searched (default: all)."""
    study_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), Integral] | None = None
    """The sampler's seed (NumPy's range: a seed outside it would fail the run after it started)."""


class TrialOut(BaseModel):
    number: int
    state: str
    value: float | None
    knobs: dict[str, Knobs] | None
    score: dict[str, Any] | None
    refused: str | None
    cut_short: bool | None


class TuningOut(BaseModel):
    id: int
    study_name: str
    status: str
    started_at: float
    ended_at: float | None
    budget: int
    window_s: float
    models: list[str]
    best: dict[str, Any] | None
    trials: list[TrialOut] | None = None


# ---------------------------------------------------------------- alerts
class AmAlert(BaseModel):
    """One alert of an Alertmanager webhook (other fields are accepted and ignored)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None
    endsAt: str | None = None
    fingerprint: str | None = Field(default=None, max_length=64)


class AmWebhook(BaseModel):
    """Alertmanager's webhook payload (version 4)."""

    version: str = "4"
    status: str = "firing"
    receiver: str = ""
    alerts: list[AmAlert] = Field(max_length=1000)


class AlertOut(BaseModel):
    id: int
    received_at: float
    status: str
    alertname: str
    model: str | None
    labels: dict[str, Any]
    annotations: dict[str, Any]
    handled: bool


class WebhookOut(BaseModel):
    recorded: int
    decisions: list[str]
    proposed: list[VersionOut]
