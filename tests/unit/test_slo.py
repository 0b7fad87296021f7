"""SLO maths as tables: requests within target from histogram buckets, the rolling p99's time
within target, the error budget and its burn rate. No database."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from domain.slo import SLO_FIELDS, Tally, slo, tally, within
from domain.spec import Sla
from domain.windows import AGGREGATE_FIELDS, ModelWindow

INF = math.inf
LAT10 = Sla(metric="latency_p99", target_ms=10)  # window 60 s, objective 0.99: the defaults


def w(start: float, buckets: dict[float, float] | None, seconds: float = 1.0, **fields: Any) -> ModelWindow:
    """A window of model "m" whose served requests are its latency histogram's count."""
    buckets = buckets or {}
    failed = sum(fields.get("failures", {}).values())
    fields.setdefault("success", buckets.get(INF, 0.0))
    return ModelWindow(
        model="m", start=start, end=start + seconds, requests=fields["success"] + failed,
        latency_buckets=buckets, **fields,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("buckets", "target", "expected"),
    [
        ({10.0: 5, 20.0: 8, INF: 10}, 20.0, 8.0),  # on a bound: that bucket's count
        ({10.0: 5, 20.0: 8, INF: 10}, 15.0, 6.5),  # 5 + (8 - 5) x (15 - 10) / (20 - 10)
        ({10.0: 5, 20.0: 8, INF: 10}, 5.0, 2.5),  # first bucket from 0: 0 + 5 x 5 / 10
        ({10.0: 5, 20.0: 8, INF: 10}, 100.0, 8.0),  # past the last bound: the 2 in +Inf are unknown
        ({"10.0": 5, "inf": 10}, 10.0, 5.0),  # stored JSON spelling
        ({10.0: 0, 20.0: 0, INF: 0}, 15.0, 0.0),
        ({}, 15.0, 0.0),
    ],
)
def test_within_interpolates_in_the_targets_bucket(
    buckets: dict[Any, float], target: float, expected: float
) -> None:
    assert within(buckets, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("window", "sla", "expected"),
    [
        # 100 served, 99 within 20 ms, 10 failed: 110 judged, 99 good
        (w(0, {10.0: 90, 20.0: 99, INF: 100}, failures={"timeout": 10}), Sla(metric="latency_p99", target_ms=20),
         Tally(110, 99)),
        # served without a histogram (Triton's summary): nothing to judge, its failures neither
        (w(0, None, success=50, failures={"timeout": 5}), LAT10, Tally(0, 0)),
        # nothing served, 5 rejected: 5 judged, none good
        (w(0, None, failures={"rejected": 5}), LAT10, Tally(5, 0)),
        # a TTFT SLA reads the TTFT histogram: 3 of 4 first tokens within 200 ms
        (w(0, {10.0: 4, INF: 4}, ttft_buckets={100.0: 1, 200.0: 3, INF: 4}), Sla(metric="ttft_p99", target_ms=200),
         Tally(4, 3)),
    ],
)  # fmt: skip
def test_tally_counts_failures_as_not_within_target(window: ModelWindow, sla: Sla, expected: Tally) -> None:
    assert tally(window, sla) == expected


GOOD = {10.0: 100, INF: 100}  # 100 requests, all within 10 ms
BAD90 = {10.0: 90, INF: 100}  # 90 of 100 within 10 ms


@pytest.mark.parametrize(
    ("windows", "sla", "span", "attainment", "p99_met", "judged_s", "burn", "budget"),
    [
        # 99/100 then 95/100: attainment 194/200 = 0.97; burn 0.03/0.01 = 3, budget 1 - 3 < 0 -> 0.
        # rolling 60 s: at 1 s 99/100 >= 99% met, at 2 s 194/200 = 97% not: met 1 s of 2
        ([w(0, {10.0: 99, INF: 100}), w(1, {10.0: 95, INF: 100})], LAT10, (0, 2), 0.97, 0.5, 2.0, 3.0, 0.0),
        # the same with objective 0.9: burn 0.03/0.1 = 0.3, budget 0.7
        ([w(0, {10.0: 99, INF: 100}), w(1, {10.0: 95, INF: 100})],
         Sla(metric="latency_p99", target_ms=10, objective=0.9), (0, 2), 0.97, 0.5, 2.0, 0.3, 0.7),
        # 90/100 then 100/100, rolling 60 s: at 1 s 90% no, at 2 s 190/200 = 95% no: met 0 s of 2
        ([w(0, BAD90), w(1, GOOD)], LAT10, (0, 2), 0.95, 0.0, 2.0, 5.0, 0.0),
        # rolling 1 s: the window at 2 s stands alone (the one ending at 1 s is out): met 1 s of 2
        ([w(0, BAD90), w(1, GOOD)], Sla(metric="latency_p99", target_ms=10, window_s=1), (0, 2),
         0.95, 0.5, 2.0, 5.0, 0.0),
        # 10 s without traffic between a good and a bad second. Rolling 1 s: the idle 10 s see no
        # requests and count neither way: met 1 s of 2 judged
        ([w(0, GOOD), w(1, None, seconds=10), w(11, BAD90)], Sla(metric="latency_p99", target_ms=10, window_s=1),
         (0, 12), 0.95, 0.5, 2.0, 5.0, 0.0),
        # rolling 60 s: the idle 10 s see the good second before them (met); the bad second sees
        # 190/200 = 95% (not): met 11 s of 12
        ([w(0, GOOD), w(1, None, seconds=10), w(11, BAD90)], LAT10, (0, 12), 0.95, 11 / 12, 12.0, 5.0, 0.0),
        # a window before the span serves only the rolling p99: attainment 100/100 = 1 (burn 0,
        # budget 1), but the p99 at 1 s over 60 s is 150/200 = 75%: met 0 s of 1
        ([w(-1, {10.0: 50, INF: 100}), w(0, GOOD)], LAT10, (0.5, 1), 1.0, 0.0, 1.0, 0.0, 1.0),
        # 990 served within target and 10 rejected: 990/1000 = 0.99 exactly the objective: burn 1,
        # budget 0, and the p99 just met (990 >= 0.99 x 1000)
        ([w(0, {10.0: 990, INF: 990}, failures={"rejected": 10})], LAT10, (0, 1), 0.99, 1.0, 1.0, 1.0, 0.0),
        # 1 of 1000 slow, over the default objective: burn 0.001/0.01 = 0.1, budget 0.9
        ([w(0, {10.0: 999, INF: 1000})], LAT10, (0, 1), 0.999, 1.0, 1.0, 0.1, 0.9),
    ],
)  # fmt: skip
def test_slo_over_a_span(
    windows: list[ModelWindow],
    sla: Sla,
    span: tuple[float, float],
    attainment: float,
    p99_met: float,
    judged_s: float,
    burn: float,
    budget: float,
) -> None:
    s = slo(windows, sla, *span)
    assert s.attainment == pytest.approx(attainment)
    assert s.p99_met_fraction == pytest.approx(p99_met)
    assert s.p99_judged_s == pytest.approx(judged_s)
    assert s.burn_rate == pytest.approx(burn)
    assert s.error_budget_remaining == pytest.approx(budget)
    assert (s.window_s, s.objective, s.target_ms) == (sla.window_s, sla.objective, sla.target_ms)


@pytest.mark.parametrize(
    "windows",
    [
        [],  # no windows
        [w(0, None, seconds=30)],  # no traffic
        [w(0, None, success=100)],  # traffic without a histogram: cannot be judged
        [w(-100, GOOD)],  # traffic only before the span (and its rolling window)
    ],
)
def test_slo_without_judged_traffic_is_unknown(windows: list[ModelWindow]) -> None:
    s = slo(windows, LAT10, 0, 10)
    assert (s.requests, s.attainment, s.p99_met_fraction, s.burn_rate, s.error_budget_remaining) == (
        0, None, None, None, None,
    )  # fmt: skip


def test_slo_reads_stored_rows_with_json_bucket_bounds() -> None:
    """The store's rows carry their bounds as JSON strings ("10.0", "inf")."""
    row = SimpleNamespace(
        start=0.0, end=1.0, success=100.0, failures={},
        latency_buckets={"10.0": 98, "20.0": 100, "inf": 100}, ttft_buckets={},
    )  # fmt: skip
    # 98 within 10 ms of 100: 0.98, burn 0.02/0.01 = 2
    s = slo([row], LAT10, 0, 1)
    assert (s.attainment, s.burn_rate) == (pytest.approx(0.98), pytest.approx(2.0))


@pytest.mark.parametrize(
    ("sla", "window_s", "objective"),
    [
        ({"metric": "latency_p99", "target_ms": 20}, 60.0, 0.99),  # a spec from before: the defaults
        ({"metric": "latency_p99", "target_ms": 20, "window_s": 300, "objective": 0.999}, 300.0, 0.999),
    ],
)
def test_sla_window_and_objective_default(sla: dict[str, Any], window_s: float, objective: float) -> None:
    s = Sla.model_validate(sla)
    assert (s.window_s, s.objective) == (window_s, objective)


@pytest.mark.parametrize(
    "bad",
    [
        {"window_s": 0},
        {"window_s": -5},
        {"window_s": 100_000},
        {"objective": 1.0},
        {"objective": 0},
        {"objective": 1.5},
    ],
)
def test_sla_refuses_a_window_or_objective_without_meaning(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Sla.model_validate({"metric": "latency_p99", "target_ms": 20, **bad})


def test_the_summarys_windows_carry_what_the_slo_reads() -> None:
    """The summary judges the SLO on the rows `store.queries.recent_windows` loads for `aggregate`."""
    assert set(SLO_FIELDS) <= set(AGGREGATE_FIELDS)


@pytest.mark.parametrize(
    ("windows", "cell"),
    [
        ([], "-"),  # no traffic to judge
        ([w(0, {10.0: 994, INF: 1000})], "[green]99.4%[/]"),  # 994/1000 meets 0.99
        ([w(0, {10.0: 95, INF: 100})], "[red]95.0%[/]"),  # below the objective
    ],
)
def test_the_live_tables_slo_cell(windows: list[ModelWindow], cell: str) -> None:
    from controlplane.cli import _slo_cell

    assert _slo_cell(slo(windows, LAT10, 0, 1)) == cell
    assert _slo_cell(None) == "-"  # no SLA
