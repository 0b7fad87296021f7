"""The control plane: the fleet, the collector, the reconciler, the SLO controller and the tuning
runner over one store, started and stopped together. The REST API (`controlplane.app`) and `slatune up` both run on it.

Data flows one way: people, the tuner, the SLO controller and alerts write desired configurations to
the store; the reconciler alone applies them through the runtime; the collector writes windows; the
API reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack

import optuna
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from collectors.collector import Collector
from collectors.fleet import fleet_collector
from collectors.selfmetrics import CollectorMetrics
from controlplane.controller import Controller
from controlplane.exported import DiagnosisCollector, FleetStateCollector, SloCounters, TuningCollector
from controlplane.reconciler import Reconciler
from controlplane.settings import Settings
from controlplane.telemetry import ControlPlaneMetrics
from controlplane.tuning import TuningRunner
from domain.slo import SLO_FIELDS, SloStatus, slo
from domain.spec import Sla
from domain.windows import aggregate
from runtime.fleet import Fleet
from store import configs, queries
from store.db import Store
from store.models import Model

log = logging.getLogger("slatune.controlplane")

SUMMARY_WINDOW_S = 30.0


class ModelSummary(BaseModel):
    """A model over the last `seconds`: traffic, latency, and its SLA (met or not)."""

    model_config = ConfigDict(frozen=True)

    model: str
    role: str
    seconds: float
    windows: int
    request_rate: float
    items_per_s: float
    failures: dict[str, float]
    p50_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    sla: Sla | None
    sla_value_ms: float | None
    """The value the SLA is about (TTFT p99 or latency p99)."""
    sla_met: bool | None
    """None when the SLA is unmeasured (no traffic in the window) or there is none."""
    slo: SloStatus | None = None
    """The SLO over the SLA's own rolling window up to now (not over `seconds`): the fraction of
    requests within target, the error budget and its burn rate. None for a model without an SLA."""
    p99_beyond_buckets: bool = False
    """The p99 is the histogram's highest finite bound (60 s), a floor: the p99 request took longer."""
    pending: float = 0.0
    """Requests waiting in Triton's queue now (the newest window's end)."""
    queue_wait_ms: float | None = None
    """How long they will wait, by Little's law over the newest window; None when nothing waits, or
    nothing completed (then `oldest_waiting_s` says what is certain)."""
    oldest_waiting_s: float = 0.0
    """How long the oldest waiting request has waited at least: stuck requests show here before
    Triton fails them, or when it never does (no queue timeout)."""


def slas_of(rows: list[Model]) -> dict[str, Sla | None]:
    """Each model's SLA in force, from its store row (a window or objective not stored: the defaults)."""
    return {m.name: _sla_of(m) for m in rows}


def _sla_of(m: Model) -> Sla | None:
    if not (m.sla_metric and m.sla_target_ms):
        return None
    judged = {"window_s": m.sla_window_s, "objective": m.sla_objective}
    return Sla(
        metric=m.sla_metric,  # type: ignore[arg-type]
        target_ms=m.sla_target_ms,
        **{k: v for k, v in judged.items() if v is not None},
    )


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        fleet: Fleet,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = ControlPlaneMetrics(self.registry)
        self.registry.register(_SlaCollector(self))
        # What the dashboards and rules read (dashboards/): knobs, device memory, SLO counters, trials.
        self.registry.register(FleetStateCollector(fleet.spec, fleet.all_knobs))
        self.registry.register(DiagnosisCollector(store, fleet.spec, fleet.all_knobs, self.clock))
        self.registry.register(SloCounters(store, self.slas, lambda: self.started_at or self.clock()))
        self.registry.register(TuningCollector(store, self.optuna_storage))
        self.metrics.known_models(fleet.spec.model_names)
        self.reconciler = Reconciler(
            fleet, store, metrics=self.metrics, clock=clock, poll_s=settings.reconcile_poll_s
        )
        self.tuning = TuningRunner(
            self.reconciler, store, settings.optuna_url, self.slas, self.optuna_storage
        )
        self.controller = Controller(
            fleet.spec, store, fleet.all_knobs, self.slas, mode=settings.controller_mode,
            nudge=self.reconciler.nudge, busy=self._tuning_owner, clock=clock, registry=self.registry,
        )  # fmt: skip
        self.collector: Collector | None = None
        self._loops = ExitStack()
        self.started_at: float | None = None
        self._storages: dict[str, optuna.storages.BaseStorage] = {}
        self._summaries: dict[float, tuple[float, dict[str, ModelSummary]]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Record the fleet in the store, close what a previous run left open (the journal's
        interrupted applies, then tuning runs whose process died), start the loops."""
        self.store.require_head()
        endpoints = {s.name: self.fleet.endpoints(s.name) for s in self.fleet.spec.servers}
        collector_metrics = CollectorMetrics(self.registry)
        for s in self.fleet.spec.servers:  # exported at 0 before the first failure, for dashboards and rates
            collector_metrics.scrape_failures.labels(s.name, "unreachable")
        collector = fleet_collector(  # records the fleet's servers and models in the store
            self.store, self.fleet.spec, endpoints, interval_s=self.settings.scrape_interval_s,
            metrics=collector_metrics, retention_raw_s=self.settings.retention_raw_s,
            prometheus_url=self.settings.prometheus_source,
            prometheus_lookback_s=self.settings.prometheus_lookback_s,
            prometheus_server_label=self.settings.prometheus_server_label,
        )  # fmt: skip
        self.optuna_storage(self.settings.optuna_url)  # opened once, before threads race to create its tables
        self.reconciler.recover()
        # Before the reconciler starts: a dead run's unmeasured trial must never be applied.
        self.tuning.recover()
        self.reconciler.start()
        self.collector = self._loops.enter_context(collector.running())
        self.controller.start()
        self.started_at = self.clock()

    def stop(self) -> None:
        """Stop the controller and tuning (the configuration they reached stays), then the
        reconciler, then collection."""
        self.controller.stop()
        self.tuning.stop(wait_s=120)
        self.reconciler.stop()
        self._loops.close()
        self.collector = None

    def _tuning_owner(self) -> str | None:
        run = self.tuning.active_run
        return None if run is None else f"tuning run {run}"

    # ------------------------------------------------------------------ reading
    def optuna_storage(self, url: str) -> optuna.storages.BaseStorage:
        """Optuna's RDB storage at `url`, opened once (opening one checks its schema)."""
        with self._lock:
            if url not in self._storages:
                self._storages[url] = optuna.storages.RDBStorage(url)
            return self._storages[url]

    def slas(self) -> dict[str, Sla | None]:
        with self.store.session() as session:
            return slas_of(list(session.scalars(select(Model)).all()))

    def summaries(self, seconds: float = SUMMARY_WINDOW_S) -> dict[str, ModelSummary]:
        """Each model over the last `seconds`. Windows arrive once a scrape interval, so a summary
        is kept for half of one: readers (the API, /metrics, the live table) share it."""
        now = self.clock()
        with self._lock:
            cached = self._summaries.get(seconds)
            if cached is not None and now - cached[0] < self.settings.scrape_interval_s / 2:
                return cached[1]
        out = self._summarise(now, seconds)
        with self._lock:
            self._summaries[seconds] = (now, out)
            if len(self._summaries) > 32:  # arbitrary window lengths: keep the newest few
                oldest = min(self._summaries, key=lambda k: self._summaries[k][0])
                del self._summaries[oldest]
        return out

    def slo(self, model: str, seconds: float) -> SloStatus | None:
        """The model's SLO over the last `seconds` (None without an SLA); the rolling p99 of the
        span's first windows looks back one SLA window before it."""
        now = self.clock()
        with self.store.session() as session:
            sla = slas_of([configs.model_row(session, model)])[model]
            if sla is None:
                return None
            rows = queries.window_rows(session, model, SLO_FIELDS, now - seconds - sla.window_s, now)
        return slo(rows, sla, now - seconds, now)

    def _summarise(self, now: float, seconds: float) -> dict[str, ModelSummary]:
        out = {}
        since = now - seconds
        with self.store.session() as session:
            rows = {m.name: m for m in session.scalars(select(Model)).all()}
            slas = slas_of(list(rows.values()))
            # The SLO is judged over each SLA's window, its first rolling p99 one window further back.
            lookback = max((2 * s.window_s for s in slas.values() if s is not None), default=0.0)
            loaded = queries.recent_windows(session, min(since, now - lookback))
            for name in self.fleet.spec.model_names:
                agg = aggregate([r for r in loaded.get(name, []) if r.end >= since])
                sla = slas.get(name)
                value = None if sla is None else sla.value_of(p99_ms=agg.p99_ms, ttft_p99_ms=agg.ttft_p99_ms)
                out[name] = ModelSummary(
                    model=name,
                    role=rows[name].role if name in rows else self.fleet.spec.model(name).role,
                    seconds=agg.seconds,
                    windows=agg.windows,
                    request_rate=agg.request_rate,
                    items_per_s=agg.inference_rate,
                    failures=agg.failures,
                    p50_ms=agg.p50_ms,
                    p99_ms=agg.p99_ms,
                    ttft_p50_ms=agg.ttft_p50_ms,
                    ttft_p99_ms=agg.ttft_p99_ms,
                    sla=sla,
                    sla_value_ms=value,
                    sla_met=None
                    if sla is None or value is None
                    else value <= sla.target_ms and not sum(agg.failures.values()),
                    slo=None if sla is None else slo(loaded.get(name, []), sla, now - sla.window_s, now),
                    p99_beyond_buckets=agg.p99_beyond_buckets,
                    pending=agg.pending,
                    queue_wait_ms=None if agg.queue_wait_ms in (None, math.inf) else agg.queue_wait_ms,
                    oldest_waiting_s=agg.oldest_waiting_s,
                )
        return out


class _SlaCollector(PromCollector):
    """Each model's SLA over the last 30 s, and its SLO over the SLA's rolling window, computed from
    the store when /metrics is scraped: what Prometheus alerts on (`slatune_sla_met == 0`, a burn
    rate above 1)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> list[GaugeMetricFamily]:
        met = GaugeMetricFamily(
            "slatune_sla_met", "1 if the model met its SLA over the last 30 s", labels=["model"]
        )
        value = GaugeMetricFamily(
            "slatune_sla_value_ms",
            "The SLA's measured value over the last 30 s (TTFT or latency p99)",
            labels=["model"],
        )
        target = GaugeMetricFamily("slatune_sla_target_ms", "The SLA's target", labels=["model"])
        attainment = GaugeMetricFamily(
            "slatune_slo_attainment",
            "The fraction of requests within the SLA's target over its rolling window (failures are not)",
            labels=["model"],
        )
        budget = GaugeMetricFamily(
            "slatune_slo_error_budget_remaining",
            "The error budget left over the SLA's rolling window: 1 - burn rate, no lower than 0",
            labels=["model"],
        )
        burn = GaugeMetricFamily(
            "slatune_slo_burn_rate",
            "The fraction of requests not within target over the SLA's rolling window, over 1 - objective",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "slatune_queue_oldest_waiting_seconds",
            "How long the oldest request in the model's queue has waited at least (0: the queue moves)",
            labels=["model"],
        )
        try:
            summaries: Mapping[str, ModelSummary] = self.plane.summaries()
        except Exception:  # a store outage must not break /metrics
            log.exception("SLA metrics unavailable")
            return []
        for s in summaries.values():
            waiting.add_metric([s.model], s.oldest_waiting_s)
            if s.sla is None:
                continue
            target.add_metric([s.model], s.sla.target_ms)
            if s.sla_value_ms is not None:
                value.add_metric([s.model], s.sla_value_ms)
            if s.sla_met is not None:
                met.add_metric([s.model], 1.0 if s.sla_met else 0.0)
            if s.slo is not None and s.slo.attainment is not None:  # None: no traffic to judge
                attainment.add_metric([s.model], s.slo.attainment)
            if s.slo is not None and s.slo.burn_rate is not None:
                burn.add_metric([s.model], s.slo.burn_rate)
            if s.slo is not None and s.slo.error_budget_remaining is not None:
                budget.add_metric([s.model], s.slo.error_budget_remaining)
        return [met, value, target, attainment, budget, burn, waiting]
