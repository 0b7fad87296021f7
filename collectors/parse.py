"""Triton's metrics page, parsed: exposition text in, one `Scrape` out. Pure: no I/O, no clock.

Counters stay cumulative here (windows are made from two scrapes in `collectors.window`). Versions
of a model are summed, since slatune tunes models, not versions.

A page is taken whole or refused whole: a counter that is NaN, infinite or negative, a bucket bound
that is not a number, a page cut off mid-line or one without a single Triton metric raises
`ParseError` with a short `reason` (the label slatune counts the failure under), so that a hostile
or broken page fails its server's scrape and never reaches a window or the store.

Two paths, one result. prometheus_client's parser, pure Python, costs 20-30 µs a line: about 90 ms
for a 100-model page of 4,847 lines (docs/benchmarks.md). The fast path (`_fast`) takes a page
whose every line is a comment, a blank or a sample of an `nv_*` / `slatune_*` family, and whose
every such sample matches the exposition grammar strictly (one regular expression over the page, in
C); it then reads only the families slatune uses, their labels parsed once per distinct label set.
Any page it cannot vouch for line by line (another family, a line out of grammar, an escaped label
value) goes through prometheus_client's parser instead, which takes or refuses it as before. Both
paths hand each sample to the same checks, so a bad value is refused with the same reason.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
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
    fast = _fast(text)
    return fast if fast is not None else parse_full(text)


# A sample line of a family slatune may read, as Triton writes it: a line feed, the name, an optional
# label set without a brace or line feed inside, one space, the value, the line's end. Anything else
# (a timestamp, tabs, a brace in a label value) fails the match and sends the page the full way.
_SAMPLE = re.compile(r"\n((?:nv|slatune)_[a-zA-Z0-9_:]*+)(?:\{([^{}\n]*+)\})? ([^ \n]++)(?=\n)")
# One label set as Triton writes it: name="value" pairs, comma-separated, an optional trailing comma;
# no backslash (an escaped value goes the full parser's way, which unescapes it).
_LABELS = re.compile(r'(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"(?:,(?=[a-zA-Z_])|,?$))*')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


class _LabelSet:
    """A label set as the fast path keeps it: the labels, the model, a numeric quantile label."""

    __slots__ = ("labels", "model", "quantile")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.model = labels.get("model")
        try:
            quantile: float | None = float(labels["quantile"])
        except (KeyError, ValueError):
            quantile = None
        self.quantile = None if quantile is None or math.isnan(quantile) else quantile


_label_sets: dict[str, _LabelSet] = {}
"""Label sets already parsed, by their text: a server's page repeats the same ones every scrape."""
_MAX_LABEL_SETS = 200_000
_ODD_LINE = re.compile(r"\n(?![#\n]|nv_|slatune_|\Z)")
"""A line that is neither a comment, a blank nor a sample of an nv_* / slatune_* family."""
_COUNTER, _FAILURE, _QUANTILE, _OTHER, _DEVICE = 1, 2, 3, 4, 5
_reads: dict[str, int] = {}
"""Per sample name, what the fast path does with it (0: a family slatune does not read)."""


def _read(name: str) -> int:
    if name.startswith(("nv_gpu_", "nv_cpu_")):
        return _DEVICE
    if name in COUNTERS:
        return _COUNTER
    if name == "nv_inference_request_failure":
        return _FAILURE
    if name in SUMMARIES:
        return _QUANTILE
    if name == "nv_inference_pending_request_count" or name.startswith((LATENCY_HISTOGRAM, *TTFT_HISTOGRAMS)):
        return _OTHER
    return 0


def _fast(text: str) -> Scrape | None:
    """The page read by the fast path, or None when it cannot vouch for every line (the full
    parser then decides). Raises ParseError for a value the checks refuse, as the full parser."""
    if (text and not text.startswith(("#", "\n", "nv_", "slatune_"))) or _ODD_LINE.search(text):
        return None  # another family, or a line that starts oddly: no vouching for it here
    nv = text.count("\nnv_") + text.startswith("nv_")
    found = _SAMPLE.findall("\n" + text)
    if len(found) != nv + text.count("\nslatune_") + text.startswith("slatune_"):
        return None  # a line of a family slatune reads is out of grammar
    if not nv:
        raise ParseError("no Triton metric (nv_*) on the page", "missing_family")
    models: dict[str, ModelSample] = defaultdict(ModelSample)
    devices: dict[str, DeviceSample] = {}
    for name, label_text, raw in found:
        kind = _reads.get(name)
        if kind is None:
            kind = _reads[name] = _read(name)
        if not kind:
            continue
        label_set = _label_sets.get(label_text)
        if label_set is None:
            if "\\" in label_text or _LABELS.fullmatch(label_text) is None:
                return None
            if len(_label_sets) >= _MAX_LABEL_SETS:
                _label_sets.clear()
            label_set = _label_sets[label_text] = _LabelSet(dict(_LABEL.findall(label_text)))
        try:
            value = float(raw)
        except ValueError:
            return None
        labels, model = label_set.labels, label_set.model
        if model is None:
            if kind == _DEVICE:
                _device_sample(devices, name, labels, value)
            continue
        m = models[model]
        # The common cases inline (a finite count, a quantile with a numeric label); any other
        # value goes through the checks, which refuse it with their reason.
        if kind == _COUNTER and 0 <= value < math.inf:
            key = COUNTERS[name]
            setattr(m, key, getattr(m, key) + value)
        elif kind == _FAILURE and 0 <= value < math.inf:
            reason = labels.get("reason", "OTHER")
            m.failures[reason] = m.failures.get(reason, 0.0) + value
        elif (
            kind == _QUANTILE and label_set.quantile is not None and (value != value or 0 <= value < math.inf)
        ):
            if value == value:  # NaN: no observation in the summary's age window, left out
                q = m.quantiles.setdefault(SUMMARIES[name], {})
                q[label_set.quantile] = max(q.get(label_set.quantile, value), value)
        else:
            _model_sample(m, name, labels, value)
    return Scrape(dict(models), devices)


def parse_full(text: str) -> Scrape:
    """The page through prometheus_client's parser: every family, every line checked (slow)."""
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


def scrape_of(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> Scrape:
    """A `Scrape` from samples already split into name, labels and value (say, a Prometheus
    server's newest sample of each series), through the same checks as a page's samples."""
    models: dict[str, ModelSample] = defaultdict(ModelSample)
    devices: dict[str, DeviceSample] = {}
    triton = False
    for name, labels, value in samples:
        triton = triton or name.startswith("nv_")
        model = labels.get("model")
        if model is not None:
            _model_sample(models[model], name, dict(labels), value)
        elif name.startswith(("nv_gpu_", "nv_cpu_")):
            _device_sample(devices, name, dict(labels), value)
    if not triton:
        raise ParseError("no Triton metric (nv_*) among the samples", "missing_family")
    return Scrape(dict(models), devices)


READ_FAMILIES = (
    *COUNTERS,
    "nv_inference_request_failure",
    "nv_inference_pending_request_count",
    *SUMMARIES,
    *(f"{h}_{s}" for h in (LATENCY_HISTOGRAM, *TTFT_HISTOGRAMS) for s in ("bucket", "count", "sum")),
)
"""The sample names slatune reads of a model (devices: every nv_gpu_* and nv_cpu_* gauge)."""
