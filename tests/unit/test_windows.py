"""Window maths on its own, as tables: windows summed over a span, raw windows downsampled to
one-minute windows, what a reset and a reconfiguration inside a window do. No database."""

from __future__ import annotations

import math
from typing import Any

import pytest

from domain.windows import (
    AppliedVersion,
    ModelWindow,
    aggregate,
    downsample,
    histogram_quantile,
    summed_buckets,
    version_of_window,
)

INF = math.inf
FAST = {10.0: 100.0, 1000.0: 100.0, INF: 100.0}  # 100 requests under 10 ms
SLOW = {10.0: 0.0, 1000.0: 100.0, INF: 100.0}  # 100 requests in (10, 1000] ms


def w(start: float, requests: float = 10.0, seconds: float = 1.0, **fields: Any) -> ModelWindow:
    """A window of model "m": `requests` requests, all successful unless failures are given."""
    fields.setdefault("success", requests - sum(fields.get("failures", {}).values()))
    fields.setdefault("request_rate", requests / seconds)
    fields.setdefault("model", "m")
    return ModelWindow(start=start, end=start + seconds, requests=requests, **fields)


@pytest.mark.parametrize(
    ("windows", "seconds", "requests", "request_rate", "inference_rate"),
    [
        ([], 0.0, 0.0, 0.0, 0.0),
        # 10 + 30 requests over 2 s; items (40 x 1 + 120 x 1) / 2
        ([w(0, 10, inference_rate=40), w(1, 30, inference_rate=120)], 2.0, 40.0, 20.0, 80.0),
        # a 1 s and a 3 s window: 40 requests / 4 s; items (10 x 1 + 5 x 3) / 4
        ([w(0, 10, 1, inference_rate=10), w(1, 30, 3, inference_rate=5)], 4.0, 40.0, 10.0, 6.25),
        # a gap between windows is not counted: 20 requests over the 2 s covered, not 11 s
        ([w(0, 10), w(10, 10)], 2.0, 20.0, 10.0, 0.0),
    ],
)  # fmt: skip
def test_rates_over_a_span(
    windows: list[ModelWindow], seconds: float, requests: float, request_rate: float, inference_rate: float
) -> None:
    agg = aggregate(windows)
    assert (agg.windows, agg.seconds, agg.requests) == (len(windows), seconds, requests)
    assert agg.request_rate == pytest.approx(request_rate)
    assert agg.inference_rate == pytest.approx(inference_rate)


@pytest.mark.parametrize(
    ("windows", "failures", "success"),
    [
        ([w(0), w(1)], {}, 20.0),
        # reasons add up across windows; successes are what is left of the requests
        ([w(0, 10, failures={"REJECTED": 2.0}), w(1, 10, failures={"REJECTED": 1.0, "BACKEND": 3.0})],
         {"REJECTED": 3.0, "BACKEND": 3.0}, 14.0),
    ],
)  # fmt: skip
def test_failures_by_reason(windows: list[ModelWindow], failures: dict[str, float], success: float) -> None:
    agg = aggregate(windows)
    assert agg.failures == failures and agg.success == success


@pytest.mark.parametrize(
    ("windows", "avg_queue_ms"),
    [
        # weighted by successes: (2 x 10 + 6 x 30) / 40 = 5
        ([w(0, 10, avg_queue_ms=2.0), w(1, 30, avg_queue_ms=6.0)], 5.0),
        # a window without successes or without a queue time does not count
        ([w(0, 10, avg_queue_ms=2.0), w(1, 0, avg_queue_ms=90.0), w(2, 10)], 2.0),
        ([w(0)], None),
    ],
)  # fmt: skip
def test_queue_time_is_weighted_by_successes(windows: list[ModelWindow], avg_queue_ms: float | None) -> None:
    assert aggregate(windows).avg_queue_ms == avg_queue_ms


@pytest.mark.parametrize(
    ("windows", "p50", "p99"),
    [
        # nine fast windows and a slow one, 1000 observations: 900 in (0, 10], 100 in (10, 1000].
        # p50: rank 500 in the first bucket, 10 x 500/900; p99: rank 990, 90/100 into the second,
        # 10 + 990 x 90/100 = 901. The worst window's p50 (990) would be wrong by 100 times.
        ([w(t, 100, latency_buckets=FAST, p50_ms=5.0, p99_ms=9.9) for t in range(9)]
         + [w(9, 100, latency_buckets=SLOW, p50_ms=990.0, p99_ms=999.0)],
         10 * 500 / 900, 10 + 990 * 90 / 100),
        # no buckets (Triton's summary): the worst window's quantiles; NaN and None are skipped
        ([w(0, p50_ms=3.0, p99_ms=12.0), w(1, p50_ms=math.nan, p99_ms=15.0), w(2)], 3.0, 15.0),
        # where some windows have buckets, the buckets decide: the summary-only window (p99 500)
        # is left out. 100 in (0, 10]: p99 at rank 99, 10 x 99/100
        ([w(0, 100, latency_buckets=FAST), w(1, p99_ms=500.0)], 5.0, 9.9),
        ([w(0)], None, None),
    ],
)  # fmt: skip
def test_latency_quantiles_from_merged_buckets(
    windows: list[ModelWindow], p50: float | None, p99: float | None
) -> None:
    agg = aggregate(windows)
    assert agg.p50_ms == pytest.approx(p50) and agg.p99_ms == pytest.approx(p99)


def test_ttft_quantiles_come_from_their_own_buckets() -> None:
    # 10 first tokens in (50, 100] and 10 in (100, 200]: p50 at rank 10, the top of (50, 100];
    # p99 at rank 19.8, 9.8/10 into (100, 200]: 100 + 100 x 0.98 = 198
    a = w(0, ttft_buckets={50.0: 0.0, 100.0: 10.0, 200.0: 10.0, INF: 10.0}, ttft_p99_ms=99.5)
    b = w(1, ttft_buckets={50.0: 0.0, 100.0: 0.0, 200.0: 10.0, INF: 10.0}, ttft_p99_ms=199.0)
    agg = aggregate([a, b])
    assert agg.ttft_p50_ms == pytest.approx(100.0) and agg.ttft_p99_ms == pytest.approx(198.0)
    assert agg.p99_ms is None  # request latency is another histogram


def test_summed_buckets_read_their_json_spelling() -> None:
    # the store keeps bounds as JSON keys ("10.0", "inf"); both spellings add up
    h = summed_buckets([{"10.0": 1.0, "inf": 2.0}, {10.0: 3.0, INF: 4.0}, None])
    assert h.buckets == {10.0: 4.0, INF: 6.0} and h.count == 6.0
    assert histogram_quantile(0.5, h) == pytest.approx(7.5)  # rank 3 of 6, 3/4 into (0, 10]


@pytest.mark.parametrize(
    "rows",
    [
        # one set of bounds, added by column; in any key order
        [{10.0: 1.0, 100.0: 2.0, INF: 2.0}, {INF: 5.0, 100.0: 4.0, 10.0: 0.0}],
        # bounds that differ: the union, a missing bound counting what its next lower one counts
        [{10.0: 1.0, 100.0: 2.0, INF: 2.0}, {10.0: 0.0, INF: 5.0}, {"100.0": 3.0, "inf": 3.0}],
        # the JSON spelling and floats, same bounds
        [{"10.0": 1.0, "100.0": 2.0, "inf": 2.0}, {10.0: 0.0, 100.0: 4.0, INF: 5.0}],
        # one set of bounds kept out of order
        [{INF: 2.0, 10.0: 1.0}, {INF: 3.0, 10.0: 0.0}],
    ],
)
def test_summed_buckets_add_windows_bound_by_bound_whichever_way_they_come(
    rows: list[dict[Any, float]],
) -> None:
    def by_hand(le: float) -> float:  # each window's count at or under `le`
        total = 0.0
        for b in rows:
            own = {float(k): v for k, v in b.items()}
            below = [k for k in own if k <= le]
            total += own[max(below)] if below else 0.0
        return total

    h = summed_buckets(rows)
    bounds = sorted({float(k) for b in rows for k in b})
    assert list(h.buckets) == bounds  # sorted, as histogram_quantile walks them
    assert h.buckets == {le: by_hand(le) for le in bounds} and h.count == by_hand(INF)


@pytest.mark.parametrize(
    ("applied_at", "start", "end", "expected"),
    [
        (None, 10.0, 11.0, (None, False)),  # no version recorded yet
        (5.0, 10.0, 11.0, (7, False)),  # applied before the window
        (10.0, 10.0, 11.0, (7, False)),  # applied as the window began: all its traffic is version 7's
        (10.5, 10.0, 11.0, (None, True)),  # applied inside: the window belongs to no version
        (11.0, 10.0, 11.0, (None, True)),  # applied as it ended: still inside (start, end]
        (12.0, 10.0, 11.0, (None, False)),  # applied after it ended (a window written late, after a
        # store outage): it ran an earlier version, not this one
    ],
)
def test_a_window_spanning_a_reconfiguration_belongs_to_no_version(
    applied_at: float | None, start: float, end: float, expected: tuple[int | None, bool]
) -> None:
    version = None if applied_at is None else AppliedVersion(7, applied_at)
    assert version_of_window(version, start, end) == expected


def test_resets_and_reconfigurations_are_counted_not_dropped() -> None:
    # a reset window's increases are lower bounds: its requests still count
    agg = aggregate([w(0, 10), w(1, 4, reset=True), w(2, 10, spans_reconfiguration=True)])
    assert (agg.requests, agg.resets, agg.spans_reconfiguration) == (24.0, 1, 1)


@pytest.mark.parametrize(
    ("ends", "minutes"),
    [
        # windows ending at 1..120 s: minute buckets [0, 60) holds 1..59, [60, 120) 60..119, then 120
        (range(1, 121), [(0.0, 59.0, 59), (59.0, 119.0, 60), (119.0, 120.0, 1)]),
        # one window per minute stays one window
        ([30, 90], [(29.0, 30.0, 1), (89.0, 90.0, 1)]),
        ([], []),
    ],
)
def test_downsampling_to_one_minute_windows(ends: list[int], minutes: list[tuple[float, float, int]]) -> None:
    raw = [w(e - 1.0, 5, inference_rate=20) for e in ends]
    out = downsample(raw, bucket_s=60.0)
    # (first start, last end, raw windows in it); 5 requests each, over 1 s each
    assert [(m.start, m.end, m.requests / 5) for m in out] == minutes
    assert all(m.request_rate == 5.0 and m.inference_rate == 20.0 for m in out)
    assert sum(m.requests for m in out) == 5 * len(raw)


def test_downsampling_keeps_the_buckets() -> None:
    # nine fast windows and a slow one in one minute: the minute's buckets are their sum, so its
    # quantiles are those of the ten windows (p99 = 10 + 990 x 90/100, as above)
    raw = [w(t, 100, latency_buckets=FAST, p99_ms=9.9, p90_ms=9.0) for t in range(9)] + [
        w(9, 100, latency_buckets=SLOW, p99_ms=999.0, p90_ms=900.0)
    ]
    (minute,) = downsample(raw, bucket_s=60.0)
    assert minute.latency_buckets == {10.0: 900.0, 1000.0: 1000.0, INF: 1000.0}
    assert minute.p99_ms == pytest.approx(901.0)
    assert minute.p90_ms == pytest.approx(10.0)  # rank 900: the top of (0, 10]
    assert aggregate([minute]).p99_ms == pytest.approx(aggregate(raw).p99_ms)


def test_downsampling_keeps_the_worst_summary_quantile_without_buckets() -> None:
    (minute,) = downsample([w(t, p99_ms=float(t % 7), p90_ms=1.0) for t in range(10)], bucket_s=60.0)
    assert (minute.p99_ms, minute.p90_ms, minute.latency_buckets) == (6.0, 1.0, {})


def test_a_downsampled_window_keeps_the_last_pending_and_the_first_sources() -> None:
    raw = [
        w(0, 10, pending=3.0, avg_batch=2.0),
        w(1, 30, pending=1.0, avg_batch=4.0, latency_source="client", ttft_source="triton"),
        w(2, 0, pending=0.0, latency_source="model"),
    ]
    (minute,) = downsample(raw, bucket_s=60.0)
    assert minute.pending == 0.0  # the newest window's gauge
    assert minute.avg_batch == pytest.approx((2 * 10 + 4 * 30) / 40)  # weighted by requests
    assert (minute.latency_source, minute.ttft_source) == ("client", "triton")


@pytest.mark.parametrize(
    ("raw", "minutes"),
    [
        # a reset in one raw window makes its minute a reset (its increases are lower bounds)
        ([w(0), w(1, reset=True), w(2)], [(None, False, 3, True)]),
        # version 1, a window across the apply of version 2, version 2, all in one minute: three
        # minute windows, so no trial's minute takes in another trial's traffic
        ([w(0, config_version=1), w(1, config_version=1), w(2, spans_reconfiguration=True),
          w(3, config_version=2)],
         [(1, False, 2, False), (None, True, 1, False), (2, False, 1, False)]),
    ],
)  # fmt: skip
def test_downsampling_keeps_resets_and_versions_apart(
    raw: list[ModelWindow], minutes: list[tuple[int | None, bool, int, bool]]
) -> None:
    out = downsample(raw, bucket_s=60.0)
    got = [(m.config_version, m.spans_reconfiguration, m.requests / 10, m.reset) for m in out]
    assert got == minutes


def test_downsampling_keeps_models_apart() -> None:
    out = downsample([w(0, model="a"), w(1, model="b"), w(2, model="a")], bucket_s=60.0)
    assert sorted((m.model, m.requests) for m in out) == [("a", 20.0), ("b", 10.0)]
