"""Window maths: what a model did over a span, and how windows add up. Pure: no store, no scraping.

A window is one model's rates, averages and latency quantiles between two times. The collectors
make raw windows from two scrapes (`collectors.window`); the store keeps them and, past the
retention age, replaces them by one-minute windows (`downsample`); readers sum windows over a span
(`aggregate`). Latency quantiles over many windows are exact where the windows carry histograms:
their buckets are added up, then the quantile is taken.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (ms), with +Inf; plus the count and sum."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    sum: float = 0.0


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """The q-quantile (0..1) of a histogram's observations, interpolating linearly inside the
    bucket, as Prometheus' histogram_quantile does. None without observations; when it falls in
    the +Inf bucket, the highest finite bound, which is then only a lower bound of the truth:
    `beyond_buckets` says so (the built-ins' and the trace's buckets reach 60 s, past any client
    timeout in use, so a quantile there means requests slower than any client waits for)."""
    bounds = sorted(h.buckets)
    if not bounds:
        return None
    total = h.buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        count = h.buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return bounds[-1]


def beyond_buckets(q: float, buckets: Mapping[Any, float] | None) -> bool:
    """Whether the q-quantile of these buckets (floats or their JSON spelling) lies past the
    highest finite bound, so that `histogram_quantile` reports that bound as a floor."""
    return _beyond(q, summed_buckets([buckets]))


def _beyond(q: float, h: Histogram) -> bool:
    finite = [le for le in h.buckets if not math.isinf(le)]
    if h.count <= 0 or not finite:
        return h.count > 0
    return h.buckets[max(finite)] < q * h.count


def summed_buckets(rows: Iterable[Mapping[Any, float] | None]) -> Histogram:
    """The histogram of many windows: their buckets added up (the quantile of the union). Bounds
    may be floats or their JSON spelling ("10.0", "inf"). Windows whose bounds differ (kept before
    the buckets were extended to 60 s, or from another source) are added on the union of the
    bounds: a window without a bound counts there what it counts at its next lower one, the most
    it is sure of, so the sum never claims a request faster than it was."""
    parsed = [
        b if isinstance(next(iter(b)), float) else {float(le): n for le, n in b.items()} for b in rows if b
    ]
    if not parsed:
        return Histogram()
    first = tuple(parsed[0])
    if all(tuple(b) == first for b in parsed):  # the usual case, one set of bounds: add by column
        columns = zip(*(b.values() for b in parsed), strict=True)
        total = dict(sorted(zip(first, map(sum, columns), strict=True)))
        return Histogram(total, total.get(math.inf, 0.0))
    bounds = sorted({le for b in parsed for le in b})
    total = dict.fromkeys(bounds, 0.0)
    for b in parsed:
        below = 0.0
        for le in bounds:
            below = b.get(le, below)
            total[le] += below
    return Histogram(total, total.get(math.inf, 0.0))


@dataclass(frozen=True)
class ModelWindow:
    """One model over [start, end]: raw (two scrapes apart) or downsampled (one minute)."""

    model: str
    start: float  # Unix seconds
    end: float
    requests: float
    """Requests that completed in the window (successes plus failures)."""
    success: float
    failures: dict[str, float] = field(default_factory=dict)
    request_rate: float = 0.0
    """Completed requests per second."""
    inference_rate: float = 0.0
    """Successful items per second (a batched request counts each item)."""
    avg_batch: float | None = None
    """Items per model execution: how well dynamic batching is batching."""
    avg_request_ms: float | None = None
    avg_queue_ms: float | None = None
    avg_compute_input_ms: float | None = None
    avg_compute_infer_ms: float | None = None
    avg_compute_output_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    """Request latency quantiles over the window from the model's latency histogram, else from
    Triton's summary at the window's end (which remembers about a minute; None when NaN)."""
    latency_source: str | None = None
    """"client" or "model" (histogram origin), "summary", or None."""
    latency_buckets: dict[float, float] = field(default_factory=dict)
    """The window's latency histogram (cumulative counts by upper bound, ms), so that quantiles
    over many windows are exact: sum the buckets, then take the quantile."""
    ttft_buckets: dict[float, float] = field(default_factory=dict)
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    ttft_source: str | None = None
    pending: float = 0.0
    reset: bool = False
    """A counter went down, or the server was unreachable in between (it may have restarted):
    the window's increases are lower bounds."""
    config_version: int | None = None
    """The configuration version the window belongs to (the store tags it: `version_of_window`)."""
    spans_reconfiguration: bool = False
    """A configuration was applied inside the window, which then belongs to no version."""

    @property
    def p99_beyond_buckets(self) -> bool:
        """p99_ms is the highest finite bucket bound, a floor: the p99 request took longer."""
        return beyond_buckets(0.99, self.latency_buckets)

    @property
    def queue_wait_ms(self) -> float | None:
        """How long a request now waiting will wait, by Little's law (L = lambda W): the requests
        pending at the window's end over the window's completion rate. An estimate of the mean,
        None when nothing is pending; infinite when requests wait and none completed (see
        `stalled_queue_s` for what is certain then)."""
        return queue_wait_ms(self.pending, self.requests, self.end - self.start)


def queue_wait_ms(pending: float, requests: float, seconds: float) -> float | None:
    """Little's law on one window: `pending` requests over `requests / seconds` completed a second."""
    if pending <= 0:
        return None
    if requests <= 0 or seconds <= 0:
        return math.inf
    return pending / (requests / seconds) * 1000.0


def stalled_queue_s(windows: Sequence[Any]) -> float:
    """How long the oldest pending request has waited at least, from consecutive windows (oldest
    first; ModelWindows or stored rows with start, end, requests, pending): while requests are
    pending at a window's start (its predecessor's end) and none completes or fails through to
    the newest window's end, those requests are all still there, so the oldest has waited at
    least that long. 0 when the newest window completed a request or nothing waits. A lower
    bound, exact to a window: it counts requests Triton has not failed (no timeout set) too."""
    stalled = 0.0
    for i in range(len(windows) - 1, 0, -1):
        w, before = windows[i], windows[i - 1]
        if w.requests > 0 or w.pending <= 0 or before.pending <= 0 or abs(before.end - w.start) > 1e-6:
            break
        stalled = windows[-1].end - w.start
    return stalled


@dataclass(frozen=True)
class DeviceWindow:
    device: str
    kind: str
    source: str  # "triton" or "nvml"
    start: float
    end: float
    utilization: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    power_w: float | None = None
    processes: dict[str, float] = field(default_factory=dict)
    """Per-process GPU memory in bytes by pid (NVML only)."""


@dataclass(frozen=True)
class AppliedVersion:
    """A model's configuration version in force, since `applied_at`."""

    id: int
    applied_at: float


def version_of_window(version: AppliedVersion | None, start: float, end: float) -> tuple[int | None, bool]:
    """The configuration version a window belongs to, and whether a reconfiguration fell inside it
    (then it belongs to none, so no trial is scored with another trial's traffic). A window that
    ended before the version was applied (written late, after a store outage) belongs to an
    earlier version this one does not name: to none."""
    if version is None or version.applied_at > end:
        return None, False
    if start < version.applied_at:
        return None, True
    return version.id, False


@dataclass(frozen=True)
class Aggregate:
    """Windows summed up: totals and rates over their span, the worst latency quantiles."""

    windows: int
    seconds: float
    requests: float
    success: float
    failures: dict[str, float] = field(default_factory=dict)
    request_rate: float = 0.0
    inference_rate: float = 0.0
    avg_queue_ms: float | None = None
    avg_request_ms: float | None = None
    """Triton's mean time in the server per successful request (what Little's law wants)."""
    p50_ms: float | None = None
    p99_ms: float | None = None
    """Over all the windows: exact from their summed histograms where they have them, else the
    worst window's (Triton's summary)."""
    p95_ms: float | None = None
    """From the histograms; the p99 where there are none (a summary has no p95)."""
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    p99_beyond_buckets: bool = False
    """p99_ms is the highest finite bucket bound, a floor: the p99 request took longer."""
    resets: int = 0
    spans_reconfiguration: int = 0
    pending: float = 0.0
    """Requests waiting at the newest window's end (Triton's gauge)."""
    queue_wait_ms: float | None = None
    """How long those will wait, by Little's law over the newest window (`queue_wait_ms`)."""
    oldest_waiting_s: float = 0.0
    """How long the oldest of them has waited at least (`stalled_queue_s`): requests stuck in the
    queue show here before Triton fails them, or when it never does."""


AGGREGATE_FIELDS = (
    "start end requests success failures inference_rate avg_queue_ms avg_request_ms p50_ms p99_ms ttft_p50_ms "
    "ttft_p99_ms latency_buckets ttft_buckets reset spans_reconfiguration pending"
).split()
"""What `aggregate` reads of a window (the store loads only these columns for it)."""


def aggregate(rows: Sequence[Any]) -> Aggregate:
    """Sum up windows: ModelWindows, or anything with their AGGREGATE_FIELDS (stored rows)."""
    if not rows:
        return Aggregate(0, 0.0, 0.0, 0.0)
    seconds = sum(r.end - r.start for r in rows)
    failures: dict[str, float] = {}
    for r in rows:
        for k, v in (r.failures or {}).items():
            failures[k] = failures.get(k, 0.0) + v
    success = sum(r.success for r in rows)
    queue = [(r.avg_queue_ms, r.success) for r in rows if r.avg_queue_ms is not None and r.success > 0]
    request = [(r.avg_request_ms, r.success) for r in rows if r.avg_request_ms is not None and r.success > 0]
    latency = summed_buckets(r.latency_buckets for r in rows)
    ttft = summed_buckets(r.ttft_buckets for r in rows)
    return Aggregate(
        windows=len(rows),
        seconds=seconds,
        requests=sum(r.requests for r in rows),
        success=success,
        failures=failures,
        request_rate=sum(r.requests for r in rows) / seconds if seconds > 0 else 0.0,
        inference_rate=sum(r.inference_rate * (r.end - r.start) for r in rows) / seconds
        if seconds > 0
        else 0.0,
        avg_queue_ms=sum(q * n for q, n in queue) / sum(n for _, n in queue) if queue else None,
        avg_request_ms=sum(q * n for q, n in request) / sum(n for _, n in request) if request else None,
        p50_ms=_quantile(0.5, latency, rows, "p50_ms"),
        p95_ms=_quantile(0.95, latency, rows, "p99_ms"),
        p99_ms=_quantile(0.99, latency, rows, "p99_ms"),
        ttft_p50_ms=_quantile(0.5, ttft, rows, "ttft_p50_ms"),
        ttft_p95_ms=_quantile(0.95, ttft, rows, "ttft_p99_ms"),
        ttft_p99_ms=_quantile(0.99, ttft, rows, "ttft_p99_ms"),
        p99_beyond_buckets=_beyond(0.99, latency),
        resets=sum(r.reset for r in rows),
        spans_reconfiguration=sum(r.spans_reconfiguration for r in rows),
        pending=rows[-1].pending,
        queue_wait_ms=queue_wait_ms(rows[-1].pending, rows[-1].requests, rows[-1].end - rows[-1].start),
        oldest_waiting_s=stalled_queue_s(rows),
    )


def _quantile(q: float, summed: Histogram, rows: Sequence[Any], fallback: str) -> float | None:
    """From the windows' summed histogram; without one, the worst window's own figure."""
    if summed.count > 0:
        return histogram_quantile(q, summed)
    return _max(getattr(r, fallback) for r in rows)


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return max(present) if present else None


def merge(rows: Sequence[ModelWindow]) -> ModelWindow:
    """One window for several of one model, version and reconfiguration flag, oldest first:
    counts and rates summed over time, quantiles from the summed buckets (else the worst window's),
    the newest pending count. The per-stage averages other than the queue's are not kept."""
    agg = aggregate(rows)
    latency = summed_buckets(r.latency_buckets for r in rows)
    batches = [(r.avg_batch, r.requests) for r in rows if r.avg_batch is not None and r.requests > 0]
    return ModelWindow(
        model=rows[0].model,
        start=min(r.start for r in rows),
        end=max(r.end for r in rows),
        config_version=rows[0].config_version,
        spans_reconfiguration=rows[0].spans_reconfiguration,
        reset=agg.resets > 0,
        requests=agg.requests,
        success=agg.success,
        failures=agg.failures,
        request_rate=agg.request_rate,
        inference_rate=agg.inference_rate,
        avg_batch=sum(b * n for b, n in batches) / sum(n for _, n in batches) if batches else None,
        avg_queue_ms=agg.avg_queue_ms,
        p50_ms=agg.p50_ms,
        p90_ms=_quantile(0.9, latency, rows, "p90_ms"),
        p99_ms=agg.p99_ms,
        latency_buckets=latency.buckets,
        ttft_buckets=summed_buckets(r.ttft_buckets for r in rows).buckets,
        ttft_p50_ms=agg.ttft_p50_ms,
        ttft_p99_ms=agg.ttft_p99_ms,
        ttft_source=next((r.ttft_source for r in rows if r.ttft_source), None),
        latency_source=next((r.latency_source for r in rows if r.latency_source), None),
        pending=rows[-1].pending,
    )


def downsample(windows: Iterable[ModelWindow], bucket_s: float = 60.0) -> list[ModelWindow]:
    """One window per model, configuration version, reconfiguration flag and `bucket_s` bucket of
    the end time (a window ending at 59.5 s is in [0, 60), one ending at 60 s in [60, 120)).
    Windows that span a reconfiguration stay apart from their version's, so a trial's minutes
    never take in another trial's traffic."""
    groups: dict[tuple[str, int | None, bool, float], list[ModelWindow]] = {}
    for w in sorted(windows, key=lambda w: w.end):
        key = (w.model, w.config_version, w.spans_reconfiguration, math.floor(w.end / bucket_s) * bucket_s)
        groups.setdefault(key, []).append(w)
    return [merge(rows) for rows in groups.values()]
