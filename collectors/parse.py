"""Triton's metrics page, parsed: exposition text in, one `Scrape` out. Pure: no I/O, no clock.

Counters stay cumulative here (windows are made from two scrapes in `collectors.window`). Versions
of a model are summed, since slatune tunes models, not versions.

A page is taken whole or refused whole: a counter that is NaN, infinite or negative, a bucket bound
that is not a number, a page cut off mid-line or one without a single Triton metric raises
`ParseError` with a short `reason` (the label slatune counts the failure under), so that a hostile
or broken page fails its server's scrape and never reaches a window or the store.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from domain.windows import Histogram

# Triton's per-model counters (cumulative) and the field each becomes.
COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
# Summaries (--metrics-config summary_latencies=true): name -> short key.
SUMMARIES = {
    "nv_inference_request_summary_us": "request",
    "nv_inference_queue_summary_us": "queue",
    "nv_inference_compute_infer_summary_us": "compute_infer",
}
# Time to first token: Triton's own histogram where the server has it (2.52+), else the one the
# built-in chat model exports through the python backend's metrics API.
TTFT_HISTOGRAMS = ("nv_inference_first_response_histogram_ms", "slatune_ttft_ms")
# Whole-request latency per window, where the model exports it (slatune's built-ins do): Triton's
# summaries remember about a minute, longer than a tuning trial's window.
LATENCY_HISTOGRAM = "slatune_request_ms"


class ParseError(ValueError):
    """The page cannot be taken: `reason` says why, as a metric label ("malformed", "truncated",
    "missing_family", "bad_value", "bad_le", "bad_quantile")."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ModelSample:
    """One model's cumulative counters and current gauges at one scrape."""

    success: float = 0.0
    failures: dict[str, float] = field(default_factory=dict)
    inferences: float = 0.0
    executions: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0
    pending: float = 0.0
    quantiles: dict[str, dict[float, float]] = field(default_factory=dict)
    """Summary quantiles in microseconds, e.g. {"request": {0.99: 12000.0}}; NaN ones left out."""
    ttft: dict[str, Histogram] = field(default_factory=dict)
    """TTFT histograms by source: "triton", "client" (client-stamped) or "model" (from pick-up)."""
    latency: dict[str, Histogram] = field(default_factory=dict)
    """Request latency histograms by source: "client" or "model"."""


@dataclass
class DeviceSample:
    """A device as Triton reports it: the GPU through DCGM, else the host's CPU."""

    kind: str  # "gpu" or "cpu"
    device: str  # the GPU's uuid, or "cpu"
    utilization: float | None = None  # 0..1
    memory_total_bytes: float | None = None
    memory_used_bytes: float | None = None
    power_w: float | None = None


@dataclass
class Scrape:
    models: dict[str, ModelSample]
    devices: dict[str, DeviceSample]


def parse(text: str) -> Scrape:
    """Parse one metrics page. Raises ParseError (with its reason) for a page that is not
    exposition text, is cut off, has no Triton metric, or holds a value no counter can have."""
    if text and not text.endswith("\n"):
        # The format ends every line with a line feed: a page that does not was cut off, and its
        # last number may be a prefix of the real one.
        raise ParseError("the page ends mid-line (truncated)", "truncated")
    models: dict[str, ModelSample] = defaultdict(ModelSample)
    devices: dict[str, DeviceSample] = {}
    triton = False
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise ParseError(f"not Prometheus exposition text: {exc}") from None
    for family in families:
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if family.type == "counter" and name == family.name + "_total":
                name = family.name  # the parser names counter samples *_total; Triton's do not end so
            triton = triton or name.startswith("nv_")
            model = labels.get("model")
            if model is not None:
                _model_sample(models[model], name, labels, value)
            elif name.startswith(("nv_gpu_", "nv_cpu_")):
                _device_sample(devices, name, labels, value)
    if not triton:
        raise ParseError("no Triton metric (nv_*) on the page", "missing_family")
    return Scrape(dict(models), devices)


def _finite(name: str, labels: dict[str, str], value: float) -> float:
    if not math.isfinite(value):
        raise ParseError(f"{_sample(name, labels)} is {value}: a gauge is finite", "bad_value")
    return value


def _count(name: str, labels: dict[str, str], value: float) -> float:
    """A counter's (or a histogram's) value, refused unless finite and not negative: NaN would
    reach the store as NULL, infinity as an infinite rate, a negative value as a false reset."""
    if not math.isfinite(value) or value < 0:
        raise ParseError(f"{_sample(name, labels)} is {value}: a count is finite and >= 0", "bad_value")
    return value


def _sample(name: str, labels: dict[str, str]) -> str:
    shown = ",".join(f'{k}="{v[:40]}"' for k, v in list(labels.items())[:4])
    return f"{name}{{{shown}}}"


def _model_sample(m: ModelSample, name: str, labels: dict[str, str], value: float) -> None:
    if name in COUNTERS:
        key = COUNTERS[name]
        setattr(m, key, getattr(m, key) + _count(name, labels, value))
    elif name == "nv_inference_request_failure":
        reason = labels.get("reason", "OTHER")
        m.failures[reason] = m.failures.get(reason, 0.0) + _count(name, labels, value)
    elif name == "nv_inference_pending_request_count":
        # A gauge, and Triton 2.51's can fall below zero (seen at -1 for a bulk model under load,
        # docs/triton.md): that is its bookkeeping, not a hostile page, so it reads as nothing
        # waiting instead of blinding the whole server. NaN and infinity are still refused.
        m.pending += max(_finite(name, labels, value), 0.0)
    elif name in SUMMARIES and "quantile" in labels:
        if not math.isnan(value):  # NaN: no observation in the summary's age window, left out
            if math.isinf(value) or value < 0:
                raise ParseError(f"{_sample(name, labels)} is {value}: not a latency", "bad_value")
            # Versions of one model: keep the worst quantile rather than adding latencies.
            q = m.quantiles.setdefault(SUMMARIES[name], {})
            quantile = _bound(name, labels, "quantile", "bad_quantile")
            q[quantile] = max(q.get(quantile, value), value)
    elif name.startswith(LATENCY_HISTOGRAM):
        source = labels.get("origin", "model")
        _histogram_sample(
            m.latency.setdefault(source, Histogram()), name, name[len(LATENCY_HISTOGRAM) :], labels, value
        )
    else:
        for base in TTFT_HISTOGRAMS:
            if name.startswith(base):
                source = "triton" if base.startswith("nv_") else labels.get("origin", "model")
                ttft = m.ttft.setdefault(source, Histogram())
                _histogram_sample(ttft, name, name[len(base) :], labels, value)


def _histogram_sample(h: Histogram, name: str, suffix: str, labels: dict[str, str], value: float) -> None:
    if suffix == "_bucket":
        le = _bound(name, labels, "le", "bad_le")  # "+Inf" parses to inf
        h.buckets[le] = h.buckets.get(le, 0.0) + _count(name, labels, value)
    elif suffix == "_count":
        h.count += _count(name, labels, value)
    elif suffix == "_sum":
        h.sum += _count(name, labels, value)


def _bound(name: str, labels: dict[str, str], label: str, reason: str) -> float:
    """A bucket's upper bound or a summary's quantile: a number (not NaN), else the page is refused."""
    try:
        bound = float(labels[label])
    except (KeyError, ValueError):
        bound = math.nan
    if math.isnan(bound):
        raise ParseError(f"{_sample(name, labels)}: {label} is not a number", reason)
    return bound


_DEVICE_FIELDS = {
    "utilization": "utilization",
    "memory_total_bytes": "memory_total_bytes",
    "memory_used_bytes": "memory_used_bytes",
    "power_usage": "power_w",
}


def _device_sample(devices: dict[str, DeviceSample], name: str, labels: dict[str, str], value: float) -> None:
    kind = "gpu" if name.startswith("nv_gpu_") else "cpu"
    field_name = _DEVICE_FIELDS.get(name[len("nv_gpu_") :])
    if field_name is None or math.isnan(value):
        return
    device = labels.get("gpu_uuid", "cpu") if kind == "gpu" else "cpu"
    sample = devices.setdefault(device, DeviceSample(kind=kind, device=device))
    setattr(sample, field_name, value)
