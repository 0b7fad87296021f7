"""The expert's first look, as rules: what a Triton engineer reads off queue time against compute
time per model, beside the device's utilization, and what follows.

- too few instances: requests queue longer than they compute while the device has headroom;
- a mistuned batching window: batches of about one under load with no queue delay, or a queue delay
  that inflates latency while batches are already full;
- interference: a latency-critical model's compute time rising with the bulk work beside it;
- a device nearly idle while its models queue, or one that holds only a small model: packing.

Pure functions over `Look`s (one model's recent windows summed, with its knobs and its device's
utilization) and their per-window series; each finding carries its evidence and the action that
follows. `slatune diagnose` and `GET /api/v1/diagnosis` read the store and call `diagnose`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from domain.spec import FleetSpec, Knobs

Kind = Literal[
    "pipeline-serialized",
    "too-few-instances",
    "batching-window",
    "interference",
    "idle-device",
    "small-device",
]


GATING_SHARE = 0.1
"""A pipeline step whose queue is this share of its target gates the pipeline (the diagnosis names it,
the SLO controller gives it an instance first)."""


@dataclass(frozen=True)
class Thresholds:
    queue_over_compute: float = 1.0
    """Queue time above this many times compute time is a queue worth acting on..."""
    queue_min_ms: float = 2.0
    """...if it is at least this long (a 0.2 ms queue against 0.1 ms compute is noise)."""
    headroom_below: float = 0.7
    """A device under this utilization has room for another instance."""
    loaded_rate: float = 5.0
    """Requests per second from which a model counts as under load."""
    batch_of_one: float = 1.3
    full_batch: float = 0.9
    """Batches at this fraction of the max batch size are full."""
    delay_share: float = 0.5
    """A queue delay is inflating latency when queueing is this share of the request time."""
    interference_corr: float = 0.6
    interference_ratio: float = 1.5
    """A latency-critical model's compute time this many times higher in its busiest bulk windows
    than in its quietest, correlated at least `interference_corr` with the bulk work."""
    idle_below: float = 0.2
    small_share: float = 0.25
    """A device whose models use under this share of its memory is a packing opportunity."""
    gating_share: float = GATING_SHARE
    """A pipeline step whose queue is this share of the pipeline's time in the server (or of its SLA
    target, if shorter) gates it (the SLO controller's `gating_step` uses the same tenth)."""
    min_windows: int = 3


@dataclass(frozen=True)
class Look:
    """One model over the recent windows."""

    model: str
    role: str
    device: str
    seconds: float
    request_rate: float
    avg_queue_ms: float | None
    avg_compute_ms: float | None
    avg_batch: float | None
    pending: float
    knobs: Knobs
    max_batch_size: int
    """What the model runs with (its own config's when the knob is 0)."""
    target_ms: float | None = None
    p99_ms: float | None = None
    windows: int = 0
    avg_request_ms: float | None = None
    """Triton's mean time in the server per request (a pipeline's: end to end)."""


@dataclass(frozen=True)
class Finding:
    kind: Kind
    subject: str
    """The model (or device) the finding is about."""
    summary: str
    action: str
    evidence: Mapping[str, float | str | None] = field(default_factory=dict)
    severity: float = 1.0
    """Larger first: how far over its threshold the evidence is (times the SLA's weight)."""


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _weight(look: Look) -> float:
    """Latency-critical models' findings come first: their SLA is what the fleet is for."""
    return 2.0 if look.role == "latency-critical" else 1.0


def too_few_instances(
    look: Look, utilization: float | None, spec: FleetSpec, t: Thresholds
) -> Finding | None:
    if look.avg_queue_ms is None or look.avg_compute_ms is None or look.windows < t.min_windows:
        return None
    if look.avg_queue_ms < t.queue_min_ms or look.avg_queue_ms < t.queue_over_compute * look.avg_compute_ms:
        return None
    if utilization is None or utilization >= t.headroom_below:
        return None
    bounds = spec.model(look.model).bounds.instances
    most = bounds.high if bounds is not None else look.knobs.instances
    more = look.knobs.instances + 1
    action = (
        f"raise instances {look.knobs.instances} -> {more}"
        if more <= most
        else f"instances are at their bound ({most}): widen bounds.instances, or move a neighbour off the device"
    )
    ratio = look.avg_queue_ms / max(look.avg_compute_ms, 1e-3)
    return Finding(
        "too-few-instances", look.model,
        f"{look.model} queues {look.avg_queue_ms:.1f} ms against {look.avg_compute_ms:.1f} ms of compute "
        f"with {look.knobs.instances} instance(s) while {look.device} is {utilization:.0%} busy",
        action,
        {"avg_queue_ms": look.avg_queue_ms, "avg_compute_ms": look.avg_compute_ms,
         "instances": look.knobs.instances, "device_utilization": utilization},
        severity=ratio * _weight(look),
    )  # fmt: skip


def pipeline_serialized(
    spec: FleetSpec, pipeline: Look, steps: Sequence[Look], t: Thresholds
) -> Finding | None:
    """The step whose queue holds the pipeline up: its queue long against its own compute and a
    large share of the pipeline's time in the server, the pipeline far slower than its steps'
    compute together. One instance per step is the classic cause: a request's step cannot overlap
    another's, and the device idles while the endpoint is slow."""
    if pipeline.windows < t.min_windows or pipeline.avg_request_ms is None or not steps:
        return None
    gating = max(steps, key=lambda s: s.avg_queue_ms or 0.0)
    queue, compute = gating.avg_queue_ms or 0.0, gating.avg_compute_ms or 0.0
    total_compute = sum(s.avg_compute_ms or 0.0 for s in steps)
    if queue < t.queue_min_ms or queue < t.queue_over_compute * compute:
        return None
    # Its share of the pipeline's time, or of the SLA target where that is shorter (a streaming
    # pipeline's time in the server is its whole stream; its SLA is the first token).
    span = min(pipeline.avg_request_ms, pipeline.target_ms or math.inf)
    if queue < t.gating_share * span or pipeline.avg_request_ms < 2 * total_compute:
        return None
    bounds = spec.model(gating.model).bounds.instances
    most = bounds.high if bounds is not None else gating.knobs.instances
    n = gating.knobs.instances
    action = (
        f"raise {gating.model}'s instances {n} -> {n + 1}: the step that gates {pipeline.model}"
        if n < most
        else f"{gating.model} is at its instance bound ({most}): widen it, or give it a device of its own"
    )
    evidence: dict[str, float | str | None] = {
        "gating_step": gating.model,
        "pipeline_avg_ms": pipeline.avg_request_ms,
        "pipeline_p99_ms": pipeline.p99_ms,
        "sla_target_ms": pipeline.target_ms,
        "steps_compute_ms": total_compute,
    }
    for s in steps:
        evidence[f"{s.model}.queue_ms"] = s.avg_queue_ms
        evidence[f"{s.model}.compute_ms"] = s.avg_compute_ms
        evidence[f"{s.model}.instances"] = s.knobs.instances
    return Finding(
        "pipeline-serialized", pipeline.model,
        f"{pipeline.model} waits in {gating.model}'s queue: {queue:.1f} ms of its {pipeline.avg_request_ms:.1f} ms "
        f"in the server, against {total_compute:.1f} ms of compute in all its steps; {gating.model} runs "
        f"{n} instance(s)",
        action, evidence,
        severity=queue / max(compute, 1e-3) * 3.0,
    )  # fmt: skip


def batching_window(look: Look, t: Thresholds) -> Finding | None:
    if look.avg_batch is None or look.windows < t.min_windows or look.max_batch_size <= 1:
        return None
    delay = look.knobs.max_queue_delay_us
    # Under load: requests come often. A latency-critical model must also be making them wait: one
    # that keeps up with batches of one loses nothing to them, and a window would only add latency.
    waiting = (look.avg_queue_ms or 0.0) >= t.queue_min_ms or look.pending > 0
    loaded = look.request_rate >= t.loaded_rate and (waiting or look.role == "bulk")
    if loaded and delay == 0 and look.avg_batch < t.batch_of_one:
        return Finding(
            "batching-window", look.model,
            f"{look.model} runs batches of {look.avg_batch:.2f} at {look.request_rate:.1f} requests/s "
            "with no queue delay: every request is a model execution of its own",
            "set max_queue_delay_us to a fraction of the compute time (e.g. 1000-5000) so batches form",
            {"avg_batch": look.avg_batch, "request_rate": look.request_rate, "max_queue_delay_us": delay},
            severity=look.request_rate / t.loaded_rate * _weight(look),
        )  # fmt: skip
    request_ms = (look.avg_queue_ms or 0.0) + (look.avg_compute_ms or 0.0)
    if (
        delay > 0
        and look.avg_queue_ms is not None
        and look.avg_batch >= t.full_batch * look.max_batch_size
        and request_ms > 0
        and look.avg_queue_ms >= t.delay_share * request_ms
    ):
        return Finding(
            "batching-window", look.model,
            f"{look.model} waits {look.avg_queue_ms:.1f} ms of its {request_ms:.1f} ms in the queue with a "
            f"{delay} us queue delay while its batches are already full ({look.avg_batch:.1f} of {look.max_batch_size})",
            f"shorten max_queue_delay_us ({delay} -> {delay // 2}) or raise instances: the delay only adds latency",
            {"avg_batch": look.avg_batch, "max_batch_size": look.max_batch_size, "avg_queue_ms": look.avg_queue_ms,
             "max_queue_delay_us": delay},
            severity=look.avg_queue_ms / request_ms * _weight(look),
        )  # fmt: skip
    return None


def interference(
    critical: Look,
    compute_series: Sequence[float],
    bulk_series: Sequence[float],
    bulk_models: Sequence[str],
    t: Thresholds,
) -> Finding | None:
    """`compute_series`: the critical model's compute ms per window; `bulk_series`: the bulk items
    per second on its device in the same windows."""
    if len(compute_series) < max(t.min_windows, 4) or not bulk_models:
        return None
    corr = _pearson(bulk_series, compute_series)
    if corr is None or corr < t.interference_corr:
        return None
    order = sorted(range(len(bulk_series)), key=lambda i: bulk_series[i])
    quarter = max(1, len(order) // 4)
    quiet = sum(compute_series[i] for i in order[:quarter]) / quarter
    busy = sum(compute_series[i] for i in order[-quarter:]) / quarter
    if quiet <= 0 or busy < t.interference_ratio * quiet:
        return None
    return Finding(
        "interference", critical.model,
        f"{critical.model}'s compute time rises with the bulk work on {critical.device} "
        f"({', '.join(bulk_models)}): {quiet:.1f} ms in the quietest quarter of windows, {busy:.1f} ms "
        f"in the busiest (correlation {corr:.2f})",
        "protect it (bulk compute_priority min, fewer bulk instances: the SLO controller's ladder), or "
        "keep them apart (a co-location rule, then `slatune plan`)",
        {"compute_ms_quiet": quiet, "compute_ms_busy": busy, "correlation": corr, "bulk": ", ".join(bulk_models)},
        severity=busy / quiet * _weight(critical),
    )  # fmt: skip


def device_findings(
    spec: FleetSpec, looks: Mapping[str, Look], utilization: Mapping[str, float | None], t: Thresholds
) -> list[Finding]:
    out = []
    for d in spec.devices:
        here = [looks[m.name] for m in spec.models if m.device == d.name and m.name in looks]
        util = utilization.get(d.name)
        queued = [
            lk for lk in here
            if lk.avg_queue_ms is not None and lk.avg_compute_ms is not None
            and lk.avg_queue_ms >= t.queue_min_ms and lk.avg_queue_ms >= t.queue_over_compute * lk.avg_compute_ms
        ]  # fmt: skip
        if util is not None and util < t.idle_below and queued:
            names = ", ".join(lk.model for lk in queued)
            out.append(
                Finding(
                    "idle-device",
                    d.name,
                    f"{d.name} is {util:.0%} busy while {names} queue longer than they compute",
                    "the work waits on something other than the device: more instances, rate-limiter "
                    "resources, or a queue delay too long for the traffic",
                    {"device_utilization": util, "queued": names},
                    severity=1.0 + len(queued),
                )
            )
        used = sum(lk.knobs.instances * spec.model(lk.model).memory_gb_per_instance for lk in here)
        if here and used < t.small_share * d.memory_gb:
            out.append(
                Finding(
                    "small-device",
                    d.name,
                    f"{d.name} holds {used:g} of {d.memory_gb:g} GB ({', '.join(lk.model for lk in here)})",
                    "a packing opportunity: `slatune plan` places the inventory on fewer devices",
                    {"memory_used_gb": used, "memory_gb": d.memory_gb},
                    severity=0.5,
                )
            )
    return out


def diagnose(
    spec: FleetSpec,
    looks: Mapping[str, Look],
    utilization: Mapping[str, float | None],
    compute_series: Mapping[str, Sequence[float]],
    bulk_series: Mapping[str, Sequence[float]],
    t: Thresholds = Thresholds(),
) -> list[Finding]:
    """Every finding, most severe first. `utilization`: per device (0..1, None unknown);
    `compute_series` and `bulk_series` (from `series`): per latency-critical model, its compute ms
    per window and the bulk items per second on its device in the same windows."""
    out: list[Finding] = []
    for m in spec.models:
        if m.source.ensemble is not None and m.name in looks:
            steps = [looks[s.model] for s in m.source.ensemble.steps if s.model in looks]
            found = pipeline_serialized(spec, looks[m.name], steps, t)
            if found:
                out.append(found)
    for look in looks.values():
        if spec.model(look.model).source.ensemble is not None:
            continue  # a pipeline's queue and compute are its steps'
        out += [
            f
            for f in (
                too_few_instances(look, utilization.get(look.device), spec, t),
                # A streaming model batches in flight, inside its one execution: Triton's batches say nothing.
                None if spec.model(look.model).streaming else batching_window(look, t),
            )
            if f
        ]
        if look.role == "latency-critical" and look.model in compute_series:
            bulk = [m.name for m in spec.models if m.role == "bulk" and m.device == look.device]
            found = interference(look, compute_series[look.model], bulk_series.get(look.model, ()), bulk, t)
            if found:
                out.append(found)
    out += device_findings(spec, looks, utilization, t)
    return sorted(out, key=lambda f: -f.severity)


def top_per_subject(findings: Sequence[Finding]) -> dict[str, Finding]:
    """The most severe finding per model or device (what the live table shows)."""
    out: dict[str, Finding] = {}
    for f in findings:
        out.setdefault(f.subject, f)
    return out


class WindowLike(Protocol):
    """What the rules read of a window: a ModelWindow, or a stored row."""

    start: float
    end: float
    requests: float
    success: float
    inference_rate: float
    avg_batch: float | None
    avg_queue_ms: float | None
    avg_compute_input_ms: float | None
    avg_compute_infer_ms: float | None
    avg_compute_output_ms: float | None
    p99_ms: float | None
    pending: float
    avg_request_ms: float | None


def compute_ms(w: WindowLike) -> float | None:
    """A window's compute time per execution: input, inference and output together."""
    parts = [w.avg_compute_input_ms, w.avg_compute_infer_ms, w.avg_compute_output_ms]
    present = [p for p in parts if p is not None]
    return sum(present) if present else None


def _mean(values: Sequence[tuple[float | None, float]]) -> float | None:
    kept = [(v, n) for v, n in values if v is not None]
    total = sum(n for _, n in kept)
    return sum(v * n for v, n in kept) / total if total > 0 else None


def look_of(spec: FleetSpec, model: str, windows: Sequence[WindowLike], knobs: Knobs) -> Look:
    """One model's recent windows summed up (means weighted by successful requests)."""
    m = spec.model(model)
    busy = [w for w in windows if w.success > 0]
    seconds = sum(w.end - w.start for w in windows)
    return Look(
        model=model,
        role=m.role,
        device=m.device,
        seconds=seconds,
        request_rate=sum(w.requests for w in windows) / seconds if seconds > 0 else 0.0,
        avg_queue_ms=_mean([(w.avg_queue_ms, w.success) for w in busy]),
        avg_compute_ms=_mean([(compute_ms(w), w.success) for w in busy]),
        avg_batch=_mean([(w.avg_batch, w.success) for w in busy]),
        pending=windows[-1].pending if windows else 0.0,
        knobs=knobs,
        max_batch_size=knobs.max_batch_size,
        target_ms=m.sla.target_ms if m.sla else None,
        p99_ms=max((w.p99_ms for w in busy if w.p99_ms is not None), default=None),
        windows=len(busy),
        avg_request_ms=_mean([(w.avg_request_ms, w.success) for w in busy]),
    )


def series(
    spec: FleetSpec, windows: Mapping[str, Sequence[WindowLike]]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per latency-critical model: its compute ms per window, and the bulk items per second on its
    device in the same windows (windows matched by their end, to the second)."""
    bulk_by_end: dict[str, dict[int, float]] = {}
    for m in spec.models:
        if m.role == "bulk":
            per_end = bulk_by_end.setdefault(m.device, {})
            for w in windows.get(m.name, ()):
                per_end[round(w.end)] = per_end.get(round(w.end), 0.0) + w.inference_rate
    compute: dict[str, list[float]] = {}
    bulk: dict[str, list[float]] = {}
    for m in spec.models:
        if m.role != "latency-critical":
            continue
        here = bulk_by_end.get(m.device, {})
        pairs = [
            (c, here[round(w.end)])
            for w in windows.get(m.name, ())
            if w.success > 0 and (c := compute_ms(w)) is not None and round(w.end) in here
        ]
        compute[m.name] = [c for c, _ in pairs]
        bulk[m.name] = [b for _, b in pairs]
    return compute, bulk


def device_utilization(spec: FleetSpec, per_server: Mapping[str, float]) -> dict[str, float | None]:
    """Per device of the spec, the utilization its servers report (their mean; None when none does).
    On a CPU host Triton reports the host's CPU, so a device of pinned cores reads as busy as the host."""
    out: dict[str, float | None] = {}
    for d in spec.devices:
        servers = {m.server for m in spec.models if m.device == d.name}
        known = [per_server[s] for s in servers if s in per_server]
        out[d.name] = sum(known) / len(known) if known else None
    return out
