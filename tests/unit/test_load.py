"""The load generator's pure parts: statistics, failure reasons, loopback-only targets."""

from __future__ import annotations

import pytest

from domain.spec import Sla
from runtime.load import ModelLoad, Record, failure_reason, percentile, require_loopback, summarize


def rec(
    model: str, latency: float, ttft: float | None = None, items: int = 1, error: str | None = None
) -> Record:
    return Record(model, 0.0, latency, ttft, items, error)


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


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("[503] Request timeout expired", "queue-timeout"),
        ("Exceeds maximum queue size", "queue-full"),
        ("Deadline Exceeded", "client-timeout"),
        ("Request for unknown model: 'x' is not found", "unavailable"),
        ("failed to connect to all addresses", "unavailable"),
        ("MAX_TOKENS must be within 1..64, got 99", "error"),
    ],
)
def test_failure_reason(message: str, reason: str) -> None:
    assert failure_reason(message) == reason


@pytest.mark.parametrize("target", ["127.0.0.1:8001", "localhost:8001", "127.3.2.1:1"])
def test_loopback_accepted(target: str) -> None:
    require_loopback(target)


@pytest.mark.parametrize("target", ["10.0.0.1:8001", "192.168.1.5:8001", "8.8.8.8:53"])
def test_non_loopback_refused(target: str) -> None:
    with pytest.raises(ValueError, match="only sent to loopback"):
        require_loopback(target)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"rate": -1.0}, {"rate": 1.0, "batch": 0}, {"concurrency": 1, "words": (5, 2)}],
)
def test_bad_model_load(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="m:"):
        ModelLoad("m", **kwargs)  # type: ignore[arg-type]


def test_percentile_of_nothing() -> None:
    assert percentile([], 99) is None
