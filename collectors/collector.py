"""The collector: scrape every server on an interval and store per-model and per-device windows.

Parsing and window arithmetic are pure (`collectors.parse`, `collectors.window`, `domain.windows`);
this module keeps the previous reading per server and writes to the store. The readings come from a
source (`collectors.sources`): each server's own page (`PageSource`, the default, described below),
or a Prometheus server that scrapes them (`collectors.prometheus.PrometheusSource`).

Fail static: nothing one server or the store does stops the others from being collected.

- Every server is scraped at once, each under a total deadline (`scrape_deadline`) enforced by
  cancelling its request, not by httpx's per-read timeouts (a page trickled a byte a second never
  trips those), and with a size cap: the body is streamed and the read stops past the cap.
- A failed scrape fails that server alone and is counted with its reason. An unreachable or slow
  server is marked stale and retried with backoff; a bad page (`ParseError`) is retried next pass.
- A model the page names that the fleet does not give to that server gets no windows from it.
- Each server's windows are written in their own transaction. While the store does not answer,
  they are kept (at most `buffer_s` of them per server, the oldest dropped first and counted) and
  written, oldest first, once it answers again: an outage of the store loses no window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import httpx

from collectors.cpustat import CoreTimes, read_core_times, utilization
from collectors.nvml import NvmlCollector
from collectors.parse import ParseError, Scrape
from collectors.selfmetrics import CollectorMetrics
from collectors.sources import PageSource, Reading, ScrapeFailed, Source
from collectors.sources import Target as Target  # where callers have imported it from
from collectors.trace import TraceReader
from collectors.window import device_window, model_window
from domain.health import Heartbeat, backoff_s
from domain.windows import DeviceWindow, Histogram, ModelWindow
from store import queries
from store.db import Store, StoreError, StoreUnavailable

log = logging.getLogger("slatune.collectors")

MAX_PAGE_BYTES = 4 * 1024 * 1024
"""A page past this is refused, its reading stopped at the cap. Triton's page takes about 5 KB a
model (the saved default-fleet page: 21.7 KB for 4), so 4 MiB is room for some 800 models on one
server. The cap also bounds what a valid but hostile page costs: parsing runs at about 3 MiB/s on a
busy 2-core host, so a page just under the cap delays a pass by about 1.4 s, keeping the healthy
servers' windows within 3 intervals of 1 s; reading it costs 4 MiB of memory at most."""
BUFFER_S = 600.0
"""How long a store outage may last before the oldest kept windows are dropped (and counted)."""
STALE_REASONS = frozenset({"unreachable", "http_error", "timeout", "no_data"})
"""Failures after which a server is marked stale and retried with backoff; after any other (a bad
page) it is tried again on the next pass."""


def scrape_deadline(interval_s: float) -> float:
    """The total time one scrape may take, from connecting to the last byte: the interval, kept
    within [1, 2] s. Servers are scraped at once, so a pass lasts about its slowest scrape: as long
    as the interval keeps every healthy server's windows one interval apart even when another
    server hangs; at least 1 s because a loopback Triton whose cores are busy with inference
    answers in tens to hundreds of milliseconds; at most 2 s because a longer wait for a page
    (longer intervals) only delays the windows of the servers that answered."""
    return min(max(interval_s, 1.0), 2.0)


def _on_own_cores(
    devices: list[DeviceWindow],
    before: dict[int, CoreTimes] | None,
    after: dict[int, CoreTimes],
    cores: frozenset[int],
) -> list[DeviceWindow]:
    """A pinned server's cpu device windows with its own cores' utilization since the last page
    (Triton's figure is the whole host's): None without a reading to compare with."""
    busy = None if before is None else utilization(before, after, cores)
    return [replace(d, utilization=busy) if d.kind == "cpu" else d for d in devices]


@dataclass
class _ServerState:
    last: Scrape | None = None
    last_at: float | None = None
    failures: int = 0
    next_attempt: float = 0.0
    stale: bool = False
    error: str | None = None
    """Why the last scrape failed ("timeout: ..."); None when it succeeded or none was made."""
    ignored: set[str] = field(default_factory=set)
    """Unassigned models already logged (each is logged once)."""
    cores_at_last: dict[int, CoreTimes] | None = None
    """The host's per-core counters when the last page was read (pinned servers only)."""


@dataclass
class _Batch:
    """One pass's windows of one server (or of NVML), waiting to be written."""

    windows: list[ModelWindow]
    devices: list[DeviceWindow]


@dataclass
class TickResult:
    """What one pass over the servers produced (also what tests and benchmarks look at)."""

    windows: list[ModelWindow] = field(default_factory=list)
    devices: list[DeviceWindow] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Servers whose scrape failed this pass: "reason: detail"."""
    store_error: str | None = None
    """Why this pass's windows (or earlier kept ones) could not be written; they are kept."""


class Collector:
    def __init__(
        self,
        store: Store,
        targets: Iterable[Target],
        *,
        interval_s: float = 1.0,
        metrics: CollectorMetrics | None = None,
        clock: Callable[[], float] = time.time,
        nvml: NvmlCollector | None = None,
        max_backoff_s: float = 30.0,
        retention_raw_s: float | None = 6 * 3600,
        downsample_every_s: float = 60.0,
        deadline_s: float | None = None,
        max_page_bytes: int = MAX_PAGE_BYTES,
        buffer_s: float = BUFFER_S,
        transport: httpx.AsyncBaseTransport | None = None,
        core_times: Callable[[], dict[int, CoreTimes]] = read_core_times,
        source: Source | None = None,
    ) -> None:
        """`core_times` reads the host's per-core counters (for servers pinned to cores). `source`
        gives the readings (default: each server's page, `PageSource`, under `deadline_s`,
        `max_page_bytes` and `transport`)."""
        self.store = store
        self.targets = list(targets)
        self.interval_s = interval_s
        self.metrics = metrics or CollectorMetrics()
        self.clock = clock
        self.nvml = nvml
        self.max_backoff_s = max_backoff_s
        self.deadline_s = deadline_s if deadline_s is not None else scrape_deadline(interval_s)
        self.max_page_bytes = max_page_bytes
        self.core_times = core_times
        self._state = {t.server: _ServerState() for t in self.targets}
        self._traces = {
            t.server: TraceReader(t.trace_dir, t.streaming) for t in self.targets if t.trace_dir is not None
        }
        # One event loop for the collector's life: the source's connections are kept between passes.
        self._loop = asyncio.new_event_loop()
        self.source: Source = source or PageSource(
            deadline_s=self.deadline_s, max_page_bytes=max_page_bytes, clock=clock, transport=transport
        )
        self._nvml_last: float | None = None
        self.retention_raw_s = retention_raw_s
        self.downsample_every_s = downsample_every_s
        self._last_downsample = clock()
        # Windows not yet written, per server ("" for NVML's), one batch per pass, oldest first.
        self._max_batches = max(math.ceil(buffer_s / interval_s), 1)
        self._pending: dict[str, deque[_Batch]] = {}
        self._store_ok = True
        # A pass scrapes every server under its own deadline: far past a few intervals is a hang.
        self.heartbeat = Heartbeat("collector", stuck_after_s=max(10 * interval_s, 30.0))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.source.aclose())
            self._loop.close()

    def stale(self) -> list[str]:
        return [name for name, st in self._state.items() if st.stale]

    def failing(self) -> dict[str, str]:
        """Servers whose last scrape failed, with why ("timeout: ...", "bad_value: ...")."""
        return {name: st.error for name, st in self._state.items() if st.error is not None}

    def pending(self) -> int:
        """Per-model windows kept for the store, not yet written."""
        return sum(len(b.windows) for q in self._pending.values() for b in q)

    def problem(self, result: TickResult) -> str | None:
        """Why a pass counts as failing (for the heartbeat), or None: its windows could not be
        written, or no server's last scrape succeeded."""
        if result.store_error is not None:
            return f"store: {result.store_error} ({self.pending()} windows kept until it answers)"
        failing = self.failing()
        if self.targets and len(failing) == len(self.targets):
            return "every server's last scrape failed: " + "; ".join(f"{s}: {e}" for s, e in failing.items())
        return None

    def tick(self) -> TickResult:
        """Scrape every server that is due once, and store the windows since its last scrape.
        Never raises: what failed is in the result, the metrics and the logs."""
        result = TickResult()
        now = self.clock()
        due = [t for t in self.targets if now >= self._state[t.server].next_attempt]
        pages = self._loop.run_until_complete(self.source.read(due)) if due else []
        for target, page in zip(due, pages, strict=True):
            self._take(target, page, result)
        nvml: list[DeviceWindow] = []
        if self.nvml is not None and self.nvml.enabled:
            now = self.clock()
            if self._nvml_last is not None:
                nvml = self.nvml.windows(self._nvml_last, now)
            self._nvml_last = now
            if nvml:
                result.devices += nvml
                self._keep("", _Batch([], nvml))
        self.metrics.stale_servers.set(len(self.stale()))
        self._flush(result)
        self._retention()
        return result

    def _take(self, target: Target, page: Reading | ScrapeFailed, result: TickResult) -> None:
        """Turn one server's reading into its windows, or count why it could not be."""
        state = self._state[target.server]
        if isinstance(page, ScrapeFailed):
            self._failed(target, state, self.clock(), page.reason, str(page), result)
            return
        now = page.at
        if state.last_at is not None and now <= state.last_at:
            # Nothing newer than the last reading (a Prometheus that has not scraped the server
            # again since): no window, and no failure either.
            return
        cores_now = self.core_times() if target.cores else None
        try:
            scrape = self._assigned(target, state, self._traced(target, page.scrape()))
            windows, devices = self._windows(state, scrape, now)
        except ParseError as exc:
            self._failed(target, state, now, exc.reason, str(exc), result)
            return
        except Exception as exc:  # a page no rule foresaw still fails its server alone
            log.exception("server %s: could not take its metrics page", target.server)
            self._failed(target, state, now, "error", f"{exc.__class__.__name__}: {exc}", result)
            return
        self.metrics.scrapes.labels(target.server).inc()
        if state.stale:
            log.warning("server %s reachable again after %d failed scrapes", target.server, state.failures)
        state.failures, state.stale, state.next_attempt, state.error = 0, False, 0.0, None
        if target.cores and cores_now is not None:
            devices = _on_own_cores(devices, state.cores_at_last, cores_now, target.cores)
            state.cores_at_last = cores_now
        state.last, state.last_at = scrape, now
        result.windows += windows
        result.devices += devices
        if windows or devices:
            self._keep(target.server, _Batch(windows, devices))

    def _traced(self, target: Target, scrape: Scrape) -> Scrape:
        """The scrape with each model's server-side latency from its trace files (origin "server"),
        read just after the page: a request done between the two lands in the next window."""
        reader = self._traces.get(target.server)
        if reader is None:
            return scrape
        try:
            histograms = reader.read()
        except OSError as exc:  # the directory unreadable: the page's own figures still count
            log.warning("server %s: trace files unreadable: %s", target.server, exc)
            return scrape
        # Every model of a traced server is timed by its traces alone, from the first pass: one whose
        # first trace file lands a pass after the page counted its first requests has an empty
        # histogram until then, not another source's figures in between.
        for model, sample in scrape.models.items():
            h = histograms.get(model, Histogram())
            sample.latency["server"] = Histogram(dict(h.buckets), h.count, h.sum)
            if model in reader.streaming or model in reader.first_responses:
                h = reader.first_responses.get(model, Histogram())
                sample.ttft["server"] = Histogram(dict(h.buckets), h.count, h.sum)
        return scrape

    def _assigned(self, target: Target, state: _ServerState, scrape: Scrape) -> Scrape:
        """The scrape without the models the fleet does not give to this server."""
        if target.models is None:
            return scrape
        ignored = scrape.models.keys() - target.models
        if not ignored:
            return scrape
        self.metrics.ignored_models.labels(target.server).inc(len(ignored))
        new = ignored - state.ignored
        if new and len(state.ignored) < 100:  # logged once each, and not without end
            state.ignored |= new
            log.warning(
                "server %s names models the fleet does not give it, ignored: %s",
                target.server,
                ", ".join(sorted(new)[:10]),
            )
        return Scrape({m: s for m, s in scrape.models.items() if m in target.models}, scrape.devices)

    def _windows(
        self, state: _ServerState, scrape: Scrape, now: float
    ) -> tuple[list[ModelWindow], list[DeviceWindow]]:
        if state.last is None or state.last_at is None:
            return [], []
        start, outage = state.last_at, state.stale
        windows = []
        for model, sample in scrape.models.items():
            window = model_window(model, state.last.models.get(model), sample, start, now)
            # Across an outage the server may have restarted, and its counters may have climbed
            # past their old values before this scrape: no drop shows it.
            windows.append(replace(window, reset=True) if outage else window)
        return windows, [device_window(d, start, now) for d in scrape.devices.values()]

    def _failed(
        self, target: Target, state: _ServerState, now: float, reason: str, detail: str, result: TickResult
    ) -> None:
        self.metrics.scrape_failures.labels(target.server, reason).inc()
        error = f"{reason}: {detail}"
        result.failed[target.server] = state.error = error
        if reason not in STALE_REASONS:
            log.warning("server %s: metrics page refused: %s", target.server, error)
            return
        state.failures += 1
        if not state.stale:
            log.warning("server %s: %s; marked stale, retrying with backoff", target.server, error)
        state.stale = True
        state.next_attempt = now + backoff_s(state.failures + 1, self.interval_s, self.max_backoff_s)

    def _keep(self, key: str, batch: _Batch) -> None:
        self._pending.setdefault(key, deque()).append(batch)

    def _trim(self) -> None:
        """After a failed write: keep each server's newest `buffer_s` of batches, drop (and count)
        the older ones, so that a long outage costs bounded memory."""
        for key, queue in self._pending.items():
            while len(queue) > self._max_batches:
                dropped = queue.popleft()
                self.metrics.windows_dropped.labels("buffer_full").inc(len(dropped.windows))
                log.warning(
                    "store unavailable too long: dropped %d kept windows of %s",
                    len(dropped.windows),
                    key or "nvml",
                )

    def _flush(self, result: TickResult) -> None:
        """Write every server's kept windows, oldest first, one transaction per server. A store
        that does not answer keeps them all; one that refuses a server's batch drops that batch
        (retrying it would refuse it again) and goes on with the other servers."""
        for key, queue in self._pending.items():
            if not queue:
                continue
            batches = list(queue)
            began = time.perf_counter()
            try:
                with self.store.session() as session:
                    ids = queries.model_ids(session)
                    versions = queries.applied_versions(session)
                    # Every server reports its host's CPU as device "cpu": the server tells them apart.
                    server_id = queries.server_ids(session).get(key)  # none for NVML's ("")
                    written = 0
                    for b in batches:
                        written += queries.add_windows(session, ids, b.windows, versions, self.interval_s)
                        queries.add_device_windows(session, b.devices, server_id)
            except StoreUnavailable as exc:
                self.metrics.store_failures.labels("unavailable").inc()
                if self._store_ok:
                    log.warning("store unavailable, keeping windows until it answers: %s", exc)
                self._store_ok = False
                result.store_error = str(exc)
                self._trim()
                break  # the same store for every server: try again next pass
            except StoreError as exc:
                refused = sum(len(b.windows) for b in batches)
                self.metrics.store_failures.labels("rejected").inc()
                self.metrics.windows_dropped.labels("rejected").inc(refused)
                log.error("store refused %d windows of %s, dropped: %s", refused, key or "nvml", exc)
                result.store_error = str(exc)
                queue.clear()
                continue
            for _ in batches:
                queue.popleft()
            if not self._store_ok:
                log.warning("store answers again: wrote %d kept windows", written)
                self._store_ok = True
            self.metrics.store_seconds.observe(time.perf_counter() - began)
            self.metrics.windows_written.inc(written)
        self.metrics.windows_pending.set(self.pending())

    def _retention(self) -> None:
        """Once a minute, downsample raw windows older than the retention age to 1-minute ones."""
        now = self.clock()
        if self.retention_raw_s is None or now - self._last_downsample < self.downsample_every_s:
            return
        self._last_downsample = now
        try:
            with self.store.session() as session:
                removed = queries.downsample(session, older_than=now - self.retention_raw_s)
        except StoreError as exc:  # tried again in a minute
            log.warning("downsampling failed: %s", exc)
            return
        if removed:
            log.info("downsampled %d raw windows older than %.0f s", removed, self.retention_raw_s)

    def run(self, stop: threading.Event) -> None:
        """Tick every interval until `stop` is set. A pass that could not write, or in which no
        server answered, beats as failing with why; collection goes on either way."""
        self.heartbeat.start()
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.heartbeat.beat(self.problem(self.tick()))
            except Exception as exc:  # nothing may end collection
                log.exception("collector tick failed")
                self.heartbeat.beat(f"{exc.__class__.__name__}: {exc}")
            stop.wait(max(self.interval_s - (time.monotonic() - began), 0.0))

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="slatune-collector", daemon=True)
        thread.start()
        return thread, stop

    @contextmanager
    def running(self) -> Iterator[Collector]:
        """Collect on a thread for the duration of the block, then stop and close."""
        thread, stop = self.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(2 * self.deadline_s + 5)  # a pass ends within its scrapes' deadline
            self.heartbeat.stop()
            if thread.is_alive():  # its event loop is still in use: leave it to the daemon thread
                log.warning("collector still in a pass after stop; not closing its client")
            else:
                self.close()
