"""The Prometheus source's pure parts: the selector it sends, and readings from a matrix answer
(literal JSON as Prometheus' /api/v1/query gives it); then one collector fed by a recorded answer
through httpx's MockTransport, to show that its windows are the page's windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from collectors.collector import Collector, Target
from collectors.parse import ParseError
from collectors.prometheus import PrometheusSource, readings, selector
from collectors.sources import Reading, ScrapeFailed
from store import queries
from store.db import Store


def sample(name: str, server: str, value: str, **labels: str) -> dict[str, Any]:
    """One series of an instant vector, as /api/v1/query gives it (evaluated at 2000)."""
    return {
        "metric": {"__name__": name, "server": server, "job": "triton", **labels},
        "value": [2000.0, value],
    }


def scraped(server: str, at: float, up: float = 1) -> list[dict[str, Any]]:
    """`up` of a server and `timestamp(up)` (labelled, nameless): when Prometheus last scraped it."""
    return [
        sample("up", server, str(up)),
        {
            "metric": {"server": server, "job": "triton", "slatune_scraped_at": "1"},
            "value": [2000.0, str(at)],
        },
    ]


def test_the_query_names_the_families_the_due_servers_and_their_scrape_times() -> None:
    q = selector([Target("a", ""), Target("gpu-1.x", "")], "server")
    assert q.startswith('{__name__=~"nv_inference_request_success|')
    assert "slatune_request_ms_bucket" in q and "nv_(?:gpu|cpu)_.+|up" in q
    servers = r'server=~"a|gpu\\-1\\.x"'  # RE2 escapes, inside a PromQL string
    assert q.endswith(
        f'{servers}}} or label_replace(timestamp(up{{{servers}}}), "slatune_scraped_at", "1", "", "")'
    )


def test_a_reading_is_each_servers_last_scrape() -> None:
    result = [
        sample("nv_inference_request_success", "a", "7", model="m", version="1"),
        sample("nv_inference_queue_duration_us", "a", "90", model="m", version="1"),
        sample("nv_cpu_utilization", "a", "0.25"),
        *scraped("a", 1999.0),
        sample("nv_inference_request_success", "b", "1", model="n", version="1"),
        *scraped("b", 1998.5),
        *scraped("c", 1900.0),  # Prometheus stopped scraping it 100 s ago
        *scraped("d", 1999.0, up=0),  # its last scrape failed: Prometheus marked its series stale
    ]
    targets = [Target(name, "") for name in "abcde"]
    a, b, c, d, e = readings(result, targets, "server", 60.0, now=2000.0)
    assert isinstance(a, Reading) and a.at == 1999.0
    scrape = a.scrape()
    assert set(scrape.models) == {"m"}
    assert (scrape.models["m"].success, scrape.models["m"].queue_us) == (7.0, 90.0)
    assert scrape.devices["cpu"].utilization == 0.25
    assert isinstance(b, Reading) and b.at == 1998.5 and b.scrape().models["n"].success == 1.0
    assert isinstance(c, ScrapeFailed) and c.reason == "no_data"
    assert isinstance(d, ScrapeFailed) and d.reason == "unreachable"
    assert isinstance(e, ScrapeFailed) and e.reason == "no_data"  # never scraped


@pytest.mark.parametrize(
    ("value", "le", "reason"), [("NaN", "10", "bad_value"), ("-3", "10", "bad_value"), ("4", "abc", "bad_le")]
)
def test_samples_are_refused_by_the_pages_checks(value: str, le: str, reason: str) -> None:
    result = [
        sample("nv_inference_request_success", "a", value, model="m"),
        sample("slatune_request_ms_bucket", "a", "4", model="m", origin="client", le=le),
        *scraped("a", 1.0),
    ]
    (reading,) = readings(result, [Target("a", "")], "server", 5.0, now=2.0)
    assert isinstance(reading, Reading)
    with pytest.raises(ParseError) as err:
        reading.scrape()
    assert err.value.reason == reason


def answer(at: float, success: float, fast: float) -> dict[str, Any]:
    """Prometheus' answer after a scrape at `at` of a server whose model m served `success`
    requests, `fast` of them within 10 ms and the rest within 100 ms."""
    m = {"model": "m", "version": "1"}
    h = {"model": "m", "origin": "client"}
    result = [
        sample("nv_inference_request_success", "s", str(success), **m),
        sample("nv_inference_queue_duration_us", "s", str(success * 2000), **m),
        sample("slatune_request_ms_bucket", "s", str(fast), le="10", **h),
        sample("slatune_request_ms_bucket", "s", str(success), le="100", **h),
        sample("slatune_request_ms_bucket", "s", str(success), le="+Inf", **h),
        sample("slatune_request_ms_count", "s", str(success), **h),
        *scraped("s", at),
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_a_collector_reading_prometheus_stores_the_windows_a_page_would_give(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.upgrade()
    with store.session() as session:
        queries.sync_fleet(
            session,
            [queries.ServerInfo("s", "", "http://s/metrics", False)],
            [queries.ModelInfo("m", "s", "bulk", "d")],
        )
    # Prometheus scraped at 100 (10 requests so far), 101 and 103 (none at 102: it missed one)
    answers = iter(
        [answer(100.0, 10, 10), answer(101.0, 30, 28), answer(101.0, 30, 28), answer(103.0, 130, 38)]
    )
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.content.decode())
        return httpx.Response(200, text=json.dumps(next(answers)))

    clock = [100.5]  # the collector's passes, half a second after each of Prometheus' scrapes
    source = PrometheusSource(
        "http://prom:9090/", lookback_s=5.0, clock=lambda: clock[0], transport=httpx.MockTransport(handler)
    )
    c = Collector(
        store, [Target("s", "http://s/metrics", frozenset({"m"}))], source=source, retention_raw_s=None
    )
    try:
        results = []
        for _ in range(4):
            results.append(c.tick())
            clock[0] += 1.0
        assert not any(r.failed for r in results)
        # no window at the baseline, nor when Prometheus had nothing newer (the third pass)
        assert [len(r.windows) for r in results] == [0, 1, 0, 1]
        first, second = results[1].windows[0], results[3].windows[0]
        assert (first.start, first.end, first.requests, first.request_rate) == (100.0, 101.0, 20.0, 20.0)
        assert first.avg_queue_ms == pytest.approx(2.0) and first.latency_source == "client"
        # 18 of 20 within 10 ms: p99 at rank 19.8 lies in (10, 100]: 10 + 90 * (19.8 - 18) / 2
        assert first.p99_ms == pytest.approx(91.0)
        assert (second.start, second.end, second.requests, second.request_rate) == (101.0, 103.0, 100.0, 50.0)
        with store.session() as session:
            assert [(w.end, w.requests) for w in queries.windows(session, "m")] == [
                (101.0, 20.0),
                (103.0, 100.0),
            ]
        assert "time=100.500" in asked[0] and "server%3D~%22s%22" in asked[0]
    finally:
        c.close()
        store.dispose()


def test_a_prometheus_that_does_not_answer_fails_every_server_and_marks_it_stale(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.upgrade()
    source = PrometheusSource(
        "http://prom:9090",
        clock=lambda: 0.0,
        transport=httpx.MockTransport(lambda _: httpx.Response(503, text="no")),
    )
    c = Collector(store, [Target("a", ""), Target("b", "")], source=source, retention_raw_s=None)
    try:
        result = c.tick()
        assert set(result.failed) == {"a", "b"} and result.failed["a"].startswith("http_error: ")
        assert c.problem(result) is not None and sorted(c.stale()) == ["a", "b"]
    finally:
        c.close()
        store.dispose()


def test_settings_choose_the_source(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from controlplane.settings import Settings

    with pytest.raises(ValidationError, match="SLATUNE_PROMETHEUS_URL"):
        Settings(data_dir=tmp_path, metrics_source="prometheus")
    chosen = Settings(data_dir=tmp_path, metrics_source="prometheus", prometheus_url="http://127.0.0.1:9090")
    assert chosen.prometheus_source == "http://127.0.0.1:9090"
    assert Settings(data_dir=tmp_path, prometheus_url="http://127.0.0.1:9090").prometheus_source is None
