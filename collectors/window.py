"""Windows from scrapes: what happened to each model between two of them, as rates, averages and
percentiles (the window record and its maths are `domain.windows`).

Pure functions of two samples and their times. A counter that went down was reset (the model was
reloaded or the server restarted): its increase over the window is then its current value, as in
Prometheus' rate(), never a negative or doubled rate, and the window is marked `reset`.
"""

from __future__ import annotations

from collectors.parse import DeviceSample, ModelSample
from domain.windows import DeviceWindow, Histogram, ModelWindow, histogram_quantile, summed_buckets

# Preference order for time to first token: Triton's own, then client-stamped, then model-side.
TTFT_SOURCES = ("server", "triton", "client", "model")
"""Where a window's time to first token comes from, first found first: the trace (every request,
from arrival, queue included), Triton's own first-response histogram (2.52 on), the built-in
chat model's histograms (from the client's send stamp, or from pick-up)."""


def increase(prev: float | None, cur: float) -> tuple[float, bool]:
    """How much a cumulative counter grew, and whether it was reset in between."""
    if prev is None:
        return 0.0, False
    if cur < prev:
        return cur, True
    return cur - prev, False


def histogram_increase(prev: Histogram | None, cur: Histogram) -> tuple[Histogram, bool]:
    """Bucket-wise increase of a cumulative histogram over a window."""
    if prev is None:
        return Histogram(), False
    count, reset = increase(prev.count, cur.count)
    if reset:
        return Histogram(dict(cur.buckets), cur.count, cur.sum), True
    buckets = {le: max(v - prev.buckets.get(le, 0.0), 0.0) for le, v in cur.buckets.items()}
    return Histogram(buckets, count, max(cur.sum - prev.sum, 0.0)), False


def _latency(
    prev: ModelSample | None, cur: ModelSample, resets: list[bool]
) -> tuple[Histogram | None, str | None]:
    """The window's request-latency histogram and its origin, None without observations.

    "server" (the trace: every request, from arrival to response) wherever the server is traced.
    Else the built-ins' own: "client" (from the load generator's send stamp) and "model" (from
    pick-up, queue left out) count disjoint requests, so a window holding both is their sum
    ("client+model"), not the stamped requests alone."""
    increases: dict[str, Histogram] = {}
    for source, h_cur in cur.latency.items():
        # A histogram the previous scrape lacked started from zero (the trace reader's do).
        before = None if prev is None else prev.latency.get(source, Histogram())
        h, was_reset = histogram_increase(before, h_cur)
        resets.append(was_reset)
        if h.count > 0:
            increases[source] = h
    if "server" in cur.latency:
        # A traced model's windows take the trace alone: a request whose trace file comes a pass
        # after the page counted it is in the next window, never timed by another source.
        return increases.get("server"), "server" if "server" in increases else None
    if "client" in increases and "model" in increases:
        both = summed_buckets([increases["client"].buckets, increases["model"].buckets])
        return both, "client+model"
    for source in ("client", "model"):
        if source in increases:
            return increases[source], source
    return None, None


def _avg_ms(total_us: float, count: float) -> float | None:
    return total_us / count / 1000.0 if count > 0 else None


def model_window(
    model: str, prev: ModelSample | None, cur: ModelSample, start: float, end: float
) -> ModelWindow:
    """The window of `model` between a previous scrape (None for the first) and this one."""
    span = max(end - start, 1e-9)
    p = prev or ModelSample()
    resets = []

    def inc(name: str) -> float:
        value, was_reset = increase(getattr(p, name) if prev else None, getattr(cur, name))
        resets.append(was_reset)
        return value

    success = inc("success")
    inferences = inc("inferences")
    executions = inc("executions")
    request_us, queue_us = inc("request_us"), inc("queue_us")
    cin, cinf, cout = inc("compute_input_us"), inc("compute_infer_us"), inc("compute_output_us")
    failures = {}
    for reason, value in cur.failures.items():
        delta, was_reset = increase(p.failures.get(reason) if prev else None, value)
        resets.append(was_reset)
        if delta:
            failures[reason] = delta
    requests = success + sum(failures.values())

    ttft_p50 = ttft_p99 = None
    ttft_source = None
    ttft_hist = Histogram()
    # A traced streaming model's first tokens come from the trace alone (as its latency does).
    for source in ("server",) if "server" in cur.ttft else TTFT_SOURCES:
        if source in cur.ttft:
            # As for latency: a histogram the previous scrape lacked started from zero.
            before = p.ttft.get(source, Histogram()) if prev else None
            h, was_reset = histogram_increase(before, cur.ttft[source])
            resets.append(was_reset)
            if h.count > 0 and ttft_source is None:
                ttft_source, ttft_hist = source, h
                ttft_p50, ttft_p99 = histogram_quantile(0.5, h), histogram_quantile(0.99, h)

    latency, latency_source = _latency(prev, cur, resets)
    # Triton's summary remembers about a minute: only a window with requests of its own may fall
    # back to it (a server that exports no histogram), never an idle one.
    # Nor a traced one: its requests not in a trace file yet are timed in the next window.
    quantiles = cur.quantiles.get("request", {}) if requests > 0 and "server" not in cur.latency else {}
    if latency is None and quantiles:
        latency_source = "summary"

    def q_ms(q: float) -> float | None:
        if latency is not None:
            return histogram_quantile(q, latency)
        v = quantiles.get(q)
        return None if v is None else v / 1000.0

    return ModelWindow(
        model=model,
        start=start,
        end=end,
        requests=requests,
        success=success,
        failures=failures,
        request_rate=requests / span,
        inference_rate=inferences / span,
        avg_batch=inferences / executions if executions > 0 else None,
        avg_request_ms=_avg_ms(request_us, success),
        avg_queue_ms=_avg_ms(queue_us, success),
        avg_compute_input_ms=_avg_ms(cin, success),
        avg_compute_infer_ms=_avg_ms(cinf, success),
        avg_compute_output_ms=_avg_ms(cout, success),
        p50_ms=q_ms(0.5),
        p90_ms=q_ms(0.9),
        p99_ms=q_ms(0.99),
        latency_source=latency_source,
        latency_buckets=dict(latency.buckets) if latency is not None else {},
        ttft_buckets=dict(ttft_hist.buckets),
        ttft_p50_ms=ttft_p50,
        ttft_p99_ms=ttft_p99,
        ttft_source=ttft_source,
        pending=cur.pending,
        reset=any(resets),
    )


def device_window(sample: DeviceSample, start: float, end: float) -> DeviceWindow:
    return DeviceWindow(
        device=sample.device,
        kind=sample.kind,
        source="triton",
        start=start,
        end=end,
        utilization=sample.utilization,
        memory_used_bytes=sample.memory_used_bytes,
        memory_total_bytes=sample.memory_total_bytes,
        power_w=sample.power_w,
    )
