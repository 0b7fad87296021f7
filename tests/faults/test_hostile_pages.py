"""A real tritonserver and a hostile metrics page, collected together by one Collector: whatever
the hostile page does (NaN counters, a bucket bound that is no number, 50 MB, a byte a second), the
healthy server gets a window every interval, the process does not swell, and the failure is
counted with its reason. And a store that stops answering loses no window: those scraped meanwhile
are written when it answers again."""

from __future__ import annotations

import http.server
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from collectors.collector import Collector, Target
from controlplane.startup import register_fleet
from runtime.fleet import Fleet
from store import queries
from store.db import Store

pytestmark = pytest.mark.integration

INTERVAL = 1.0
MODEL = "safety-guard"  # a model of the healthy server whose windows are watched


def triton_like(le: str = "10", success: str = "5") -> bytes:
    return f"""# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="{MODEL}",version="1"}} {success}
# TYPE slatune_request_ms histogram
slatune_request_ms_bucket{{model="{MODEL}",origin="client",le="{le}"}} 5
slatune_request_ms_bucket{{model="{MODEL}",origin="client",le="+Inf"}} 5
slatune_request_ms_count{{model="{MODEL}",origin="client"}} 5
slatune_request_ms_sum{{model="{MODEL}",origin="client"}} 20
""".encode()


HUGE_BYTES = 50 * 1024 * 1024
HANDLER_MAX_S = 15.0  # no hostile answer outlives this, whatever the client does


@contextmanager
def hostile_server(kind: str) -> Iterator[str]:
    """A loopback HTTP server answering every GET with the hostile page `kind`; its URL."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            began = time.monotonic()
            try:
                if kind in ("nan_counters", "le_abc"):
                    body = triton_like(success="NaN") if kind == "nan_counters" else triton_like(le="abc")
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif kind == "page_50mb":  # no Content-Length (HTTP/1.0: the body ends at close)
                    self.send_response(200)
                    self.end_headers()
                    line = f'nv_inference_request_success{{model="{MODEL}",version="1"}} 1\n'.encode()
                    chunk = line * (65536 // len(line))
                    sent = 0
                    while sent < HUGE_BYTES and not stop.is_set():
                        self.wfile.write(chunk)
                        sent += len(chunk)
                elif kind == "slow_loris":  # one byte a second: per-read timeouts never fire
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not stop.is_set() and time.monotonic() - began < HANDLER_MAX_S:
                        self.wfile.write(b"#")
                        self.wfile.flush()
                        stop.wait(1.0)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the collector stopped reading: what it should do

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Samples this process's RSS every 20 ms while the block runs: [baseline, peak]."""
    seen = [rss_bytes(), rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            seen[1] = max(seen[1], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(1)


@pytest.fixture
def store(tmp_path: Path, default_fleet: Fleet) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    endpoints = {srv.name: default_fleet.endpoints(srv.name) for srv in default_fleet.spec.servers}
    register_fleet(s, default_fleet.spec, endpoints)
    yield s
    s.dispose()


def healthy_target(fleet: Fleet) -> Target:
    models = frozenset(m.name for m in fleet.spec.models if m.server == "triton0")
    return Target("triton0", fleet.endpoints("triton0").metrics_url, models)


def window_ends(store: Store, model: str = MODEL) -> list[float]:
    with store.session() as session:
        return [r.end for r in queries.windows(session, model)]


def assert_a_window_every_interval(ends: list[float], began: float, until: float) -> None:
    assert ends, "no window of the healthy server"
    points = [began, *ends, until]
    gaps = [b - a for a, b in itertools.pairwise(points)]
    assert max(gaps) < 3 * INTERVAL, gaps


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan_counters", "bad_value"),
        ("le_abc", "bad_le"),
        ("page_50mb", "too_large"),
        ("slow_loris", "timeout"),
    ],
)
def test_a_hostile_page_beside_a_real_triton_fails_alone(
    default_fleet: Fleet, store: Store, kind: str, reason: str
) -> None:
    with hostile_server(kind) as url:
        collector = Collector(
            store, [healthy_target(default_fleet), Target("hostile", url)], interval_s=INTERVAL,
            retention_raw_s=None,
        )  # fmt: skip
        with peak_rss() as rss:
            began = time.time()
            with collector.running():
                time.sleep(8 * INTERVAL)
                status = collector.heartbeat.status()
                failing = collector.failing()
            until = time.time()
        failures = collector.metrics.scrape_failures.labels("hostile", reason)._value.get()
    assert failures >= 1
    assert failing.keys() == {"hostile"} and failing["hostile"].startswith(reason), failing
    assert status == "ok", status  # one server answers: the collector itself is fine
    # the first scrape is the baseline, so the first window ends one pass after `began`
    assert_a_window_every_interval(window_ends(store), began + INTERVAL, until)
    growth = rss[1] - rss[0]
    assert growth < 100 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"


def test_windows_scraped_while_the_store_is_down_are_written_when_it_answers(
    default_fleet: Fleet, store: Store
) -> None:
    """The store "goes down" by pointing the running collector at a database on a closed port
    (the shared PostgreSQL is never touched), then comes back."""
    down = Store("postgresql+psycopg://slatune@127.0.0.1:9/nowhere")
    collector = Collector(store, [healthy_target(default_fleet)], interval_s=INTERVAL, retention_raw_s=None)
    try:
        began = time.time()
        with collector.running():
            time.sleep(3 * INTERVAL)
            collector.store = down
            outage_began = time.time()
            time.sleep(5 * INTERVAL)
            status = collector.heartbeat.status()
            kept = collector.pending()
            outage_ended = time.time()
            collector.store = store
            time.sleep(3 * INTERVAL)
            until = time.time()
    finally:
        down.dispose()
    assert status.startswith("failing: store:") and "windows kept" in status, status
    assert kept >= 3 * len(default_fleet.spec.models)  # several passes' windows, every model
    assert collector.pending() == 0 and collector.metrics.windows_pending._value.get() == 0
    assert collector.metrics.windows_dropped.labels("buffer_full")._value.get() == 0
    ends = window_ends(store)
    assert sum(outage_began < e <= outage_ended for e in ends) >= 4, ends
    assert_a_window_every_interval(ends, began + INTERVAL, until)
