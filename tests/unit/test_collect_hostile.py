"""Hostile and broken metrics pages, each beside a healthy server in one collector: the bad page
fails its own server's scrape, counted with its reason, and the healthy server keeps its windows.
Literal exposition text served through httpx's MockTransport (no network); the store is a SQLite
file; the clock is injected."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from collectors.collector import Collector, Target, scrape_deadline
from collectors.parse import ParseError, parse
from store import queries
from store.db import Store, StoreUnavailable


def triton_page(model: str, success: float, *, le: str = "10", value: str | None = None) -> str:
    """A small Triton page for one model; `value` replaces the success counter's value."""
    return f"""# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="{model}",version="1"}} {value if value is not None else success}
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="{model}",version="1"}} {success * 100}
# TYPE slatune_request_ms histogram
slatune_request_ms_bucket{{model="{model}",origin="client",le="{le}"}} {success}
slatune_request_ms_bucket{{model="{model}",origin="client",le="+Inf"}} {success}
slatune_request_ms_count{{model="{model}",origin="client"}} {success}
slatune_request_ms_sum{{model="{model}",origin="client"}} {success * 3}
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


GOOD = "http://good/metrics"
BAD = "http://bad/metrics"


class Trickle(httpx.AsyncByteStream):
    """A slow-loris body: one byte every `every_s`, forever (a per-read timeout never fires)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b"#"
            await asyncio.sleep(self.every_s)


class Endless(httpx.AsyncByteStream):
    """A page without end, in valid 64 KiB chunks."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        line = b'nv_inference_request_success{model="m",version="1"} 1\n'
        chunk = line * (65536 // len(line))
        while True:
            yield chunk


def hostile(kind: str) -> httpx.Response:
    pages = {
        "nan_counter": triton_page("m", 1, value="NaN"),
        "inf_counter": triton_page("m", 1, value="+Inf"),
        "negative_counter": triton_page("m", 1, value="-5"),
        "bad_le": triton_page("m", 1, le="abc"),
        "nan_le": triton_page("m", 1, le="NaN"),
        "nan_bucket": triton_page("m", 1).replace('le="10"} 1', 'le="10"} NaN'),
        "truncated": triton_page("m", 1)[:-30],
        "missing_family": "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n",
        "empty": "",
        "malformed": "nv_inference_count{model= 3\n",
    }
    if kind in pages:
        return httpx.Response(200, text=pages[kind])
    if kind == "huge_declared":
        return httpx.Response(200, content=b"x" * (300 * 1024))
    if kind == "huge_streamed":
        return httpx.Response(200, stream=Endless())
    if kind == "slow_loris":
        return httpx.Response(200, stream=Trickle(0.05))
    if kind == "http_500":
        return httpx.Response(500, text="oops")
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'slatune.db'}")
    s.upgrade()
    with s.session() as session:
        queries.sync_fleet(
            session,
            [queries.ServerInfo("good", "", GOOD, False), queries.ServerInfo("bad", "", BAD, False)],
            [
                queries.ModelInfo(m, srv, "bulk", "dev0", None, None)
                for m, srv in (("m", "good"), ("n", "bad"))
            ],
        )
    yield s
    s.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collector(store: Store, bad: Callable[[], httpx.Response], clock: Clock, **kwargs: object) -> Collector:
    """A collector of a healthy server (model m, success +10 a scrape) and `bad`."""
    scrapes = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "good":
            scrapes[0] += 1
            return httpx.Response(200, text=triton_page("m", 10.0 * scrapes[0]))
        return bad()

    targets = [Target("good", GOOD, frozenset({"m"})), Target("bad", BAD, frozenset({"n"}))]
    options: dict[str, object] = {"interval_s": 1.0, "clock": clock, "retention_raw_s": None}
    options.update(kwargs)
    return Collector(store, targets, transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan_counter", "bad_value"),
        ("inf_counter", "bad_value"),
        ("negative_counter", "bad_value"),
        ("nan_bucket", "bad_value"),
        ("bad_le", "bad_le"),
        ("nan_le", "bad_le"),
        ("truncated", "truncated"),
        ("missing_family", "missing_family"),
        ("empty", "missing_family"),
        ("malformed", "malformed"),
        ("huge_declared", "too_large"),  # Content-Length over the cap: refused unread
        ("huge_streamed", "too_large"),  # no length: read up to the cap, then dropped
        ("slow_loris", "timeout"),
        ("http_500", "http_error"),
    ],
)
def test_a_hostile_page_fails_only_its_own_server(store: Store, kind: str, reason: str) -> None:
    clock = Clock()
    c = collector(store, lambda: hostile(kind), clock, max_page_bytes=256 * 1024, deadline_s=0.3)
    try:
        results = []
        for _ in range(3):
            results.append(c.tick())  # never raises
            clock.now += 1.0
        assert results[0].failed["bad"].startswith(reason + ": ")
        assert c.failing() == {"bad": results[0].failed["bad"]}
        # the healthy server: a window every pass after the first, 10 requests each
        for r in results[1:]:
            assert [(w.model, w.requests) for w in r.windows] == [("m", 10.0)]
            assert "good" not in r.failed
        m = c.metrics
        tried = 2 if reason in {"timeout", "http_error"} else 3  # stale: retried after 2 s
        assert m.scrape_failures.labels("bad", reason)._value.get() == tried
        assert m.scrapes.labels("good")._value.get() == 3
        assert m.windows_written._value.get() == 2
        assert c.problem(results[-1]) is None  # one server still answers: the collector is not failing
    finally:
        c.close()


def test_every_server_failing_is_the_collectors_problem(store: Store) -> None:
    clock = Clock()
    c = Collector(
        store,
        [Target("a", "http://a/metrics"), Target("b", "http://b/metrics")],
        clock=clock,
        transport=httpx.MockTransport(lambda _: hostile("nan_counter")),
    )
    try:
        problem = c.problem(c.tick())
        assert problem is not None and problem.startswith("every server's last scrape failed: a: bad_value")
    finally:
        c.close()


def test_a_model_the_fleet_does_not_give_the_server_gets_no_windows_from_it(store: Store) -> None:
    """The bad server's page names m (the good server's model) beside its own n."""
    clock = Clock()
    calls = [0]

    def both() -> httpx.Response:
        calls[0] += 1
        return httpx.Response(200, text=triton_page("m", 500.0 * calls[0]) + triton_page("n", calls[0]))

    c = collector(store, both, clock)
    try:
        for _ in range(3):
            result = c.tick()
            clock.now += 1.0
        assert sorted((w.model, w.requests) for w in result.windows) == [("m", 10.0), ("n", 1.0)]
        assert c.metrics.ignored_models.labels("bad")._value.get() == 3
        assert not c.failing()
    finally:
        c.close()


class FlakyStore:
    """The store, or an outage of it: every session fails as a database that does not answer."""

    def __init__(self, store: Store) -> None:
        self.store, self.down = store, False

    @contextmanager
    def session(self) -> Iterator[Session]:
        if self.down:
            cause = OperationalError("connect", {}, Exception("connection refused"))
            raise StoreUnavailable("store x: OperationalError: connection refused") from cause
        with self.store.session() as session:
            yield session


def test_windows_are_kept_through_a_store_outage_and_written_after_it(store: Store, tmp_path: Path) -> None:
    own = Store(f"sqlite:///{tmp_path / 'own.db'}")
    own.upgrade()
    with own.session() as session:
        queries.sync_fleet(
            session,
            [queries.ServerInfo("good", "", GOOD, False)],
            [queries.ModelInfo("m", "good", "bulk", "dev0", None, None)],
        )
    flaky, clock = FlakyStore(own), Clock()
    # buffer_s 3 at 1 s: three passes' windows are kept, older ones dropped
    c = collector(flaky, lambda: hostile("http_500"), clock, buffer_s=3.0)  # type: ignore[arg-type]
    try:
        c.tick()  # the baseline scrape at 1000: no window yet
        flaky.down = True
        for _ in range(5):  # windows ending at 1001 ... 1005
            clock.now += 1.0
            result = c.tick()
            assert result.store_error is not None and result.windows
            problem = c.problem(result)
            assert problem is not None and problem.startswith("store: ")
        assert c.pending() == 3 and c.metrics.windows_pending._value.get() == 3
        assert c.metrics.windows_dropped.labels("buffer_full")._value.get() == 2  # 1001 and 1002
        flaky.down = False
        clock.now += 1.0
        result = c.tick()
        assert result.store_error is None and c.pending() == 0 and c.problem(result) is None
        with own.session() as session:
            rows = queries.windows(session, "m")
            ends = [r.end for r in rows]
            assert ends == [1003.0, 1004.0, 1005.0, 1006.0]  # oldest first, none lost but the dropped
            assert all(r.requests == 10 for r in rows) and not any(r.reset for r in rows)
        assert c.metrics.windows_written._value.get() == 4
    finally:
        c.close()
        own.dispose()


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        (triton_page("m", 1, value="NaN"), "bad_value"),
        (triton_page("m", 1, le="abc"), "bad_le"),
        ('# TYPE s summary\nnv_inference_request_summary_us{model="m",quantile="x"} 3\n', "bad_quantile"),
        ('nv_inference_request_summary_us{model="m",quantile="0.9"} -1\n', "bad_value"),
        ('nv_inference_pending_request_count{model="m"} NaN\n', "bad_value"),
        ("nv_cpu_utilization 0.5", "truncated"),
    ],
)
def test_parse_refuses_a_page_with_its_reason(page: str, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse(page)
    assert err.value.reason == reason


def test_a_negative_pending_gauge_reads_as_nothing_waiting() -> None:
    # Triton 2.51 reported -1 for a bulk model under load: its bookkeeping, not a hostile page.
    scrape = parse('nv_inference_pending_request_count{model="m",version="1"} -1\nnv_cpu_utilization 0.5\n')
    assert scrape.models["m"].pending == 0.0


def test_nan_quantiles_and_nan_device_gauges_are_still_left_out() -> None:
    scrape = parse(
        'nv_inference_request_summary_us{model="m",quantile="0.5"} NaN\nnv_gpu_power_usage{gpu_uuid="g"} NaN\n'
    )
    assert scrape.models["m"].quantiles == {} and scrape.devices == {}
    assert not math.isnan(scrape.models["m"].success)


@pytest.mark.parametrize(
    ("interval", "deadline"), [(0.25, 1.0), (0.5, 1.0), (1.0, 1.0), (1.5, 1.5), (10.0, 2.0)]
)
def test_the_scrape_deadline_follows_the_interval_within_one_and_two_seconds(
    interval: float, deadline: float
) -> None:
    assert scrape_deadline(interval) == deadline


def test_readiness_says_why_a_server_fails(store: Store) -> None:
    from types import SimpleNamespace

    from fastapi import Response

    from controlplane.api.routes.ops import readyz
    from domain.health import Heartbeat

    clock = Clock()
    c = collector(store, lambda: hostile("bad_le"), clock)
    c.heartbeat.start()
    try:
        c.heartbeat.beat(c.problem(c.tick()))
        reconciler = SimpleNamespace(heartbeat=Heartbeat("reconciler", 60.0))
        reconciler.heartbeat.start()
        servers = [SimpleNamespace(name="good"), SimpleNamespace(name="bad")]
        plane = SimpleNamespace(
            store=store,
            reconciler=reconciler,
            collector=c,
            tuning=SimpleNamespace(active_run=None),
            controller=SimpleNamespace(mode="off"),
            fleet=SimpleNamespace(spec=SimpleNamespace(servers=servers)),
        )
        response = Response()
        out = readyz(plane, response)  # type: ignore[arg-type]
        assert response.status_code == 503
        assert out.checks["server:good"] == "ok" and out.checks["collector"] == "ok"
        assert out.checks["server:bad"].startswith("failing: bad_le: ")
    finally:
        c.close()
