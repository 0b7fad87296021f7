"""SLO attainment: how well a model kept its SLA over a span, from its windows. Pure: no store.

An SLA says "p99 of <metric> within target_ms over a rolling window_s, for an objective fraction
of requests". From the windows' histograms (cumulative counts by upper bound, ms) this module
works out, over a span:

- attainment: the fraction of requests within target. Inside the bucket that holds the target
  the count is interpolated linearly, as Prometheus' histogram_quantile does; failed requests
  count as not within target (they are added to the histogram's observations, which hold the
  requests that were served);
- the fraction of time the rolling p99 met the target: each window ending in the span is judged
  by the windows that ended in the `window_s` before it (itself included). The p99 is within
  target exactly when at least 99% of those requests are: the quantile and the count within
  target interpolate in the same buckets, and a failure (or an observation past the last finite
  bound) is never within target. Time whose rolling window saw no requests counts neither way;
- the error budget: the objective allows a fraction (1 - objective) of requests to miss, the
  burn rate is the bad fraction over that allowance (1: the budget lasts exactly the span), and
  the budget left is 1 - burn rate, shown no lower than 0 (the burn rate says by how much it was
  overspent).

A window whose requests were served but that has no histogram (its latency came from Triton's
summary) cannot be judged and is left out of every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from domain.spec import Sla

QUANTILE = 0.99
"""Both SLA metrics are a p99."""
SLO_FIELDS = ("start", "end", "success", "failures", "latency_buckets", "ttft_buckets")
"""What `slo` reads of a window (ModelWindow, or a stored row with these columns)."""


def within(buckets: Mapping[Any, float], target_ms: float) -> float:
    """Observations at or below `target_ms` in a cumulative histogram (bounds as floats or their
    JSON spelling), interpolating linearly inside the bucket that holds the target, from 0 for the
    first. Observations in +Inf are never within: their value is unknown."""
    ordered = sorted((float(le), count) for le, count in buckets.items())
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if math.isinf(le):
            break
        if target_ms < le:
            if target_ms <= lower_bound:
                return lower_count
            return lower_count + (count - lower_count) * (target_ms - lower_bound) / (le - lower_bound)
        lower_bound, lower_count = le, count
    return lower_count


@dataclass(frozen=True)
class Tally:
    """Requests of one window that can be judged, and those of them within target."""

    requests: float = 0.0
    good: float = 0.0


def tally(window: Any, sla: Sla) -> Tally:
    """One window against the SLA: served requests from the SLA metric's histogram, plus the
    failures (never within target). Served requests without a histogram: nothing to judge."""
    buckets: Mapping[Any, float] = (
        window.ttft_buckets if sla.metric == "ttft_p99" else window.latency_buckets
    ) or {}
    served = max((count for le, count in buckets.items() if math.isinf(float(le))), default=0.0)
    failed = sum((window.failures or {}).values())
    if served <= 0 and window.success > 0:
        return Tally()
    return Tally(served + failed, within(buckets, sla.target_ms) if served > 0 else 0.0)


class SloStatus(BaseModel):
    """A model's SLO over [start, end]."""

    model_config = ConfigDict(frozen=True)

    metric: str
    target_ms: float
    window_s: float
    objective: float
    start: float
    end: float
    requests: float
    """Requests judged (served with a histogram, or failed)."""
    good: float
    """Of those, within target."""
    attainment: float | None
    """good / requests; None without requests."""
    p99_met_fraction: float | None
    """The fraction of time (with traffic in its rolling window) the rolling p99 was within target."""
    p99_judged_s: float
    """The time that fraction is of."""
    error_budget_remaining: float | None
    """1 - burn rate, no lower than 0."""
    burn_rate: float | None
    """(1 - attainment) / (1 - objective): 1 spends the budget exactly over the span."""


def slo(windows: Sequence[Any], sla: Sla, start: float, end: float) -> SloStatus:
    """The SLO of one model over [start, end], from its windows oldest first (by end). Windows
    ending before `start`, up to `sla.window_s` before, only serve the rolling p99 of the first
    ones in the span: pass them for a rolling window that is full from the span's start."""
    windows = sorted(windows, key=lambda w: w.end)
    tallies = [tally(w, sla) for w in windows]
    inside = [i for i, w in enumerate(windows) if start <= w.end <= end]
    requests = sum(tallies[i].requests for i in inside)
    good = sum(tallies[i].good for i in inside)
    met_s = judged_s = 0.0
    first = 0  # the oldest window in the rolling window of window i
    rolling = Tally()
    for i, w in enumerate(windows):
        rolling = Tally(rolling.requests + tallies[i].requests, rolling.good + tallies[i].good)
        while windows[first].end <= w.end - sla.window_s:
            rolling = Tally(rolling.requests - tallies[first].requests, rolling.good - tallies[first].good)
            first += 1
        if not start <= w.end <= end or rolling.requests <= 1e-9:
            continue
        judged_s += w.end - w.start
        if rolling.good >= QUANTILE * rolling.requests - 1e-9:
            met_s += w.end - w.start
    attainment = good / requests if requests > 0 else None
    burn = None if attainment is None else (1.0 - attainment) / (1.0 - sla.objective)
    return SloStatus(
        metric=sla.metric,
        target_ms=sla.target_ms,
        window_s=sla.window_s,
        objective=sla.objective,
        start=start,
        end=end,
        requests=requests,
        good=good,
        attainment=attainment,
        p99_met_fraction=met_s / judged_s if judged_s > 0 else None,
        p99_judged_s=judged_s,
        error_budget_remaining=None if burn is None else max(0.0, 1.0 - burn),
        burn_rate=burn,
    )
