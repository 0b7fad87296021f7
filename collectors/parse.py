"""Triton's metrics page, parsed: exposition text in, one `Scrape` out. Pure: no I/O, no clock.

Counters stay cumulative here (windows are made from two scrapes in `collectors.window`). Versions
of a model are summed, since slatune tunes models, not versions.
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
    """The page is not Prometheus exposition text."""


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
    """Parse one metrics page. Raises ParseError for text that is not exposition format."""
    models: dict[str, ModelSample] = defaultdict(ModelSample)
    devices: dict[str, DeviceSample] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise ParseError(f"not Prometheus exposition text: {exc}") from None
    for family in families:
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if family.type == "counter" and name == family.name + "_total":
                name = family.name  # the parser names counter samples *_total; Triton's do not end so
            model = labels.get("model")
            if model is not None:
                _model_sample(models[model], name, labels, value)
            elif name.startswith(("nv_gpu_", "nv_cpu_")):
                _device_sample(devices, name, labels, value)
    return Scrape(dict(models), devices)


def _model_sample(m: ModelSample, name: str, labels: dict[str, str], value: float) -> None:
    if name in COUNTERS:
        key = COUNTERS[name]
        setattr(m, key, getattr(m, key) + value)
    elif name == "nv_inference_request_failure":
        reason = labels.get("reason", "OTHER")
        m.failures[reason] = m.failures.get(reason, 0.0) + value
    elif name == "nv_inference_pending_request_count":
        m.pending += value
    elif name in SUMMARIES and "quantile" in labels:
        if not math.isnan(value):
            # Versions of one model: keep the worst quantile rather than adding latencies.
            q = m.quantiles.setdefault(SUMMARIES[name], {})
            quantile = float(labels["quantile"])
            q[quantile] = max(q.get(quantile, value), value)
    elif name.startswith(LATENCY_HISTOGRAM):
        source = labels.get("origin", "model")
        _histogram_sample(
            m.latency.setdefault(source, Histogram()), name[len(LATENCY_HISTOGRAM) :], labels, value
        )
    else:
        for base in TTFT_HISTOGRAMS:
            if name.startswith(base):
                source = "triton" if base.startswith("nv_") else labels.get("origin", "model")
                _histogram_sample(m.ttft.setdefault(source, Histogram()), name[len(base) :], labels, value)


def _histogram_sample(h: Histogram, suffix: str, labels: dict[str, str], value: float) -> None:
    if suffix == "_bucket":
        le = float(labels["le"])  # "+Inf" parses to inf
        h.buckets[le] = h.buckets.get(le, 0.0) + value
    elif suffix == "_count":
        h.count += value
    elif suffix == "_sum":
        h.sum += value


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
