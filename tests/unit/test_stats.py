"""Statistics of request records, as tables: the one percentile definition, per-model summaries
and whether they meet their SLA."""

from __future__ import annotations

import math

import pytest

from domain.spec import Sla
from domain.stats import LoadReport, ModelStats, Record, format_ms, percentile, summarize


def rec(
    model: str, latency: float, ttft: float | None = None, items: int = 1, error: str | None = None
) -> Record:
    return Record(model, 0.0, latency, ttft, items, error)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        # Sorted values x[0..n-1]; the q-th percentile sits at rank r = q/100 * (n-1) and
        # interpolates linearly: x[floor r] + (r - floor r) * (x[floor r + 1] - x[floor r]).
        ([], 99, None),  # nothing measured
        ([7.0], 0, 7.0),  # one value is every percentile
        ([7.0], 99, 7.0),
        ([3.0, 1.0, 2.0], 0, 1.0),  # r = 0: the minimum, whatever the order given
        ([3.0, 1.0, 2.0], 100, 3.0),  # r = 2: the maximum
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # r = 1.5: 2 + 0.5 * (3 - 2)
        ([10.0, 20.0], 50, 15.0),  # r = 0.5: 10 + 0.5 * 10 (nearest rank would say 10)
        ([10.0, 20.0], 99, 19.9),  # r = 0.99: 10 + 0.99 * 10 (nearest rank would say 20)
        ([0.0, 10.0], 25, 2.5),  # r = 0.25: 0 + 0.25 * 10
        ([float(i) for i in range(1, 101)], 99, 99.01),  # r = 98.01: 99 + 0.01 * (100 - 99)
        ([float(i) for i in range(1, 101)], 50, 50.5),  # r = 49.5: the median of 1..100
        ([float(i) for i in range(1, 11)], 90, 9.1),  # r = 8.1: 9 + 0.1 * (10 - 9)
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == (None if expected is None else pytest.approx(expected))


def test_percentile_takes_any_iterable() -> None:
    assert percentile((float(v) for v in (4, 1, 3, 2)), 50) == pytest.approx(2.5)  # r = 1.5 over 1, 2, 3, 4


def test_summarize_counts_rates_and_percentiles() -> None:
    records = [rec("emb", 0.010 * i, items=8) for i in range(1, 101)] + [rec("emb", 1.0, error="queue-full")]
    s = summarize(records, duration=10.0, slas={})["emb"]
    assert (s.sent, s.ok, s.failed) == (101, 100, {"queue-full": 1})
    assert s.rate == pytest.approx(10.1)  # 101 requests / 10 s
    assert s.goodput == pytest.approx(80.0)  # 100 ok x 8 items / 10 s
    assert s.latency_p50_ms == pytest.approx(505.0)  # median of 10..1000 ms in steps of 10
    assert s.latency_p99_ms == pytest.approx(990.1)  # failed requests do not count in latency
    assert s.sla_met is None


@pytest.mark.parametrize(
    ("ttfts_ms", "target", "met"),
    [
        ([100.0] * 99 + [150.0], 200.0, True),
        ([100.0] * 98 + [250.0, 250.0], 200.0, False),  # p99 lands on 250
    ],
)
def test_sla_met_uses_ttft_for_streaming(ttfts_ms: list[float], target: float, met: bool) -> None:
    records = [rec("chat", 1.0, ttft=t / 1000) for t in ttfts_ms]
    s = summarize(records, 10.0, {"chat": Sla(metric="ttft_p99", target_ms=target)})["chat"]
    assert s.sla_value_ms == s.ttft_p99_ms and s.sla_met is met


def test_a_failure_breaks_the_sla() -> None:
    records = [rec("guard", 0.001)] * 50 + [rec("guard", 0.001, error="queue-timeout")]
    s = summarize(records, 1.0, {"guard": Sla(metric="latency_p99", target_ms=20)})["guard"]
    assert s.sla_met is False


def test_models_without_records_are_listed() -> None:
    assert summarize([], 1.0, {}, ["chat"])["chat"].sent == 0


def test_report_adds_up_its_models() -> None:
    report = LoadReport(
        2.0,
        {
            "a": ModelStats("a", sent=10, ok=8, failed={"queue-full": 2}),
            "b": ModelStats("b", sent=5, ok=4, failed={"queue-timeout": 1}),
        },
    )
    assert (report.sent, report.failed) == (15, 3)  # 10 + 5 sent; 2 + 1 failed
    assert report.to_dict()["models"]["a"]["failed"] == {"queue-full": 2}


@pytest.mark.parametrize(("value", "text"), [(None, "-"), (math.nan, "-"), (12.345, "12.3"), (0.0, "0.0")])
def test_format_ms(value: float | None, text: str) -> None:
    assert format_ms(value) == text
