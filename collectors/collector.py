"""The collector: scrape every server on an interval and store per-model and per-device windows.

Parsing and window arithmetic are pure (`collectors.parse`, `collectors.window`, `domain.windows`);
this module does the HTTP, keeps the previous scrape per server, and writes to the store. An
unreachable server is marked stale and retried with backoff; a malformed page fails that scrape
alone. Neither stops the collector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import httpx

from collectors.nvml import NvmlCollector
from collectors.parse import ParseError, Scrape, parse
from collectors.selfmetrics import CollectorMetrics
from collectors.window import device_window, model_window
from domain.health import Heartbeat
from domain.windows import DeviceWindow, ModelWindow
from store import queries
from store.db import Store

log = logging.getLogger("slatune.collectors")


@dataclass(frozen=True)
class Target:
    server: str
    metrics_url: str


@dataclass
class _ServerState:
    last: Scrape | None = None
    last_at: float | None = None
    failures: int = 0
    next_attempt: float = 0.0
    stale: bool = False


@dataclass
class TickResult:
    """What one pass over the servers produced (also what tests and benchmarks look at)."""

    windows: list[ModelWindow] = field(default_factory=list)
    devices: list[DeviceWindow] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


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
    ) -> None:
        self.store = store
        self.targets = list(targets)
        self.interval_s = interval_s
        self.metrics = metrics or CollectorMetrics()
        self.clock = clock
        self.nvml = nvml
        self.max_backoff_s = max_backoff_s
        self._state = {t.server: _ServerState() for t in self.targets}
        self._http = httpx.Client(timeout=max(interval_s, 1.0), trust_env=False)
        self._nvml_last: float | None = None
        self.retention_raw_s = retention_raw_s
        self.downsample_every_s = downsample_every_s
        self._last_downsample = clock()
        # A pass scrapes every server under its own deadline: far past a few intervals is a hang.
        self.heartbeat = Heartbeat("collector", stuck_after_s=max(10 * interval_s, 30.0))

    def close(self) -> None:
        self._http.close()

    def stale(self) -> list[str]:
        return [name for name, st in self._state.items() if st.stale]

    def tick(self) -> TickResult:
        """Scrape every server that is due once, and store the windows since its last scrape."""
        result = TickResult()
        for target in self.targets:
            state = self._state[target.server]
            now = self.clock()
            if now < state.next_attempt:
                continue
            try:
                text = self._fetch(target)
                scrape = parse(text)
            except (httpx.HTTPError, ParseError) as exc:
                self._failed(target, state, now, exc, result)
                continue
            self.metrics.scrapes.labels(target.server).inc()
            outage = state.stale
            if outage:
                log.warning(
                    "server %s reachable again after %d failed scrapes", target.server, state.failures
                )
            state.failures, state.stale, state.next_attempt = 0, False, 0.0
            if state.last is not None and state.last_at is not None:
                start = state.last_at
                for model, sample in scrape.models.items():
                    window = model_window(model, state.last.models.get(model), sample, start, now)
                    # Across an outage the server may have restarted, and its counters may have
                    # climbed past their old values before this scrape: no drop shows it.
                    result.windows.append(replace(window, reset=True) if outage else window)
                result.devices += [device_window(d, start, now) for d in scrape.devices.values()]
            state.last, state.last_at = scrape, now
        if self.nvml is not None and self.nvml.enabled:
            now = self.clock()
            if self._nvml_last is not None:
                result.devices += self.nvml.windows(self._nvml_last, now)
            self._nvml_last = now
        self.metrics.stale_servers.set(len(self.stale()))
        if result.windows or result.devices:
            self._store(result)
        self._retention()
        return result

    def _retention(self) -> None:
        """Once a minute, downsample raw windows older than the retention age to 1-minute ones."""
        now = self.clock()
        if self.retention_raw_s is None or now - self._last_downsample < self.downsample_every_s:
            return
        self._last_downsample = now
        with self.store.session() as session:
            removed = queries.downsample(session, older_than=now - self.retention_raw_s)
        if removed:
            log.info("downsampled %d raw windows older than %.0f s", removed, self.retention_raw_s)

    def _fetch(self, target: Target) -> str:
        resp = self._http.get(target.metrics_url)
        resp.raise_for_status()
        return resp.text

    def _failed(
        self, target: Target, state: _ServerState, now: float, exc: Exception, result: TickResult
    ) -> None:
        reason = "malformed" if isinstance(exc, ParseError) else "unreachable"
        self.metrics.scrape_failures.labels(target.server, reason).inc()
        result.failed[target.server] = f"{reason}: {exc}"
        if reason == "malformed":
            log.warning("server %s: metrics page could not be parsed: %s", target.server, exc)
            return
        state.failures += 1
        if not state.stale:
            log.warning("server %s unreachable (%s); marked stale, retrying with backoff", target.server, exc)
        state.stale = True
        state.next_attempt = now + min(self.interval_s * 2**state.failures, self.max_backoff_s)

    def _store(self, result: TickResult) -> None:
        began = time.perf_counter()
        with self.store.session() as session:
            ids = queries.model_ids(session)
            versions = queries.applied_versions(session)
            written = queries.add_windows(session, ids, result.windows, versions, self.interval_s)
            queries.add_device_windows(session, result.devices)
        self.metrics.store_seconds.observe(time.perf_counter() - began)
        self.metrics.windows_written.inc(written)

    def run(self, stop: threading.Event) -> None:
        """Tick every interval until `stop` is set. Store errors are logged and the loop goes on."""
        self.heartbeat.start()
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.tick()
                self.heartbeat.beat()
            except Exception as exc:  # a store outage must not end collection
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
            thread.join(5)
            self.heartbeat.stop()
            self.close()
