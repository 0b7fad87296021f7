"""What the dashboards and the Prometheus rules read that the loops do not export on their own,
computed when /metrics is scraped:

- each model's knobs as it runs them (`slatune_model_knob{model,knob}`) and each device's planned
  memory against its budget: the Tuning and Fleet dashboards plot them over time;
- SLO counters (`slatune_slo_requests_total`, `slatune_slo_requests_good_total`) that only grow, so
  Prometheus can take the error ratio over any window: the multiwindow, multi-burn-rate alerts of
  the SRE workbook need 5 m to 3 d, not the SLA's own rolling window the gauges are judged over;
- the newest tuning run's trials: the last trial's objective and SLA constraints, trials by state;
- the expert's diagnosis (`slatune diagnose`) of the last minute: per model and device the severity of
  its top finding (0: nothing to say), and each firing finding by kind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector
from sqlalchemy import func, select

from domain.slo import tally
from domain.spec import FleetSpec, Knobs, Sla, device_memory_used
from store.db import Store
from store.models import MetricWindow, Model, TuningRun

log = logging.getLogger("slatune.exported")

GB = 1e9
COMPUTE_PRIORITY = {"max": 1.0, "default": 0.0, "min": -1.0}
"""`compute_priority` as a number, so a panel can plot it: up is more of the device."""
RAW_RESOLUTION_S = 60.0
"""Windows shorter than this are raw (downsampling writes one-minute windows anew: never counted twice)."""


def knob_values(knobs: Knobs, resources: Iterable[str] = ()) -> dict[str, float]:
    """One model's knobs as numbers: rate-limiter resources as `resources.<name>` (0 where the model
    takes none of a resource its server has), the preferred batch sizes as the largest (0: none)."""
    out = {
        "max_queue_delay_us": float(knobs.max_queue_delay_us),
        "instances": float(knobs.instances),
        "priority": float(knobs.priority),
        "max_queue_size": float(knobs.max_queue_size),
        "queue_timeout_us": float(knobs.queue_timeout_us),
        "compute_priority": COMPUTE_PRIORITY[knobs.compute_priority],
        "max_batch_size": float(knobs.max_batch_size),
        "preferred_batch_size_max": float(max(knobs.preferred_batch_sizes, default=0)),
    }
    for name in sorted({*resources, *knobs.resources}):
        out[f"resources.{name}"] = float(knobs.resources.get(name, 0))
    return out


class FleetStateCollector(PromCollector):
    """Each model's running knobs, each device's planned memory and budget."""

    def __init__(self, spec: FleetSpec, knobs: Callable[[], Mapping[str, Knobs]]) -> None:
        self.spec = spec
        self.knobs = knobs

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        knob = GaugeMetricFamily(
            "slatune_model_knob",
            "The knobs each model runs with (compute_priority: max 1, default 0, min -1)",
            labels=["model", "knob"],
        )
        budget = GaugeMetricFamily(
            "slatune_device_memory_budget_bytes",
            "The memory models on a device may use",
            labels=["device", "kind"],
        )
        planned = GaugeMetricFamily(
            "slatune_device_memory_planned_bytes",
            "What the models' instances hold on a device (instances x memory per instance)",
            labels=["device"],
        )
        running = self.knobs()
        for name, k in sorted(running.items()):
            resources = self.spec.server(self.spec.model(name).server).rate_limit_resources
            for key, value in knob_values(k, resources).items():
                knob.add_metric([name, key], value)
        # A model whose knobs are not known yet (a fleet still starting) counts at its spec's.
        used = device_memory_used(self.spec, {**{m.name: m.knobs for m in self.spec.models}, **running})
        for d in self.spec.devices:
            budget.add_metric([d.name, d.kind], d.memory_gb * GB)
            planned.add_metric([d.name], used.get(d.name, 0.0) * GB)
        return [knob, budget, planned]


class SloCounters(PromCollector):
    """Requests judged against each SLA and those within target, counted once per stored window
    (by window id, so a window written late, after a store outage, still counts), from the windows
    that ended since the control plane started. A counter restarts with the process, as counters do.
    A window committed after one with a higher id was read is missed: the counters may under-count by
    a window, never count one twice."""

    def __init__(
        self, store: Store, slas: Callable[[], Mapping[str, Sla | None]], since: Callable[[], float]
    ) -> None:
        self.store = store
        self.slas = slas
        self.since = since
        self._lock = threading.Lock()
        self._last_id = 0
        self._requests: dict[str, float] = {}
        self._good: dict[str, float] = {}

    def describe(self) -> list[Metric]:
        return []

    def update(self) -> None:
        slas = {m: s for m, s in self.slas().items() if s is not None}
        with self._lock, self.store.session() as session:
            q = (
                select(Model.name, MetricWindow.id, MetricWindow.success, MetricWindow.failures,
                       MetricWindow.latency_buckets, MetricWindow.ttft_buckets)
                .join(Model, Model.id == MetricWindow.model_id)
                .where(MetricWindow.id > self._last_id, MetricWindow.resolution_s < RAW_RESOLUTION_S)
                .order_by(MetricWindow.id)
            )  # fmt: skip
            if self._last_id == 0:
                q = q.where(MetricWindow.end >= self.since())
            for row in session.execute(q):
                self._last_id = max(self._last_id, row.id)
                sla = slas.get(row.name)
                if sla is None:
                    continue
                t = tally(row, sla)
                self._requests[row.name] = self._requests.get(row.name, 0.0) + t.requests
                self._good[row.name] = self._good.get(row.name, 0.0) + t.good
            if self._last_id == 0:  # nothing yet: start after what exists, not from the beginning
                self._last_id = session.scalar(select(func.coalesce(func.max(MetricWindow.id), 0))) or 0
        for m in slas:
            self._requests.setdefault(m, 0.0)
            self._good.setdefault(m, 0.0)

    def collect(self) -> list[Metric]:
        requests = CounterMetricFamily(
            "slatune_slo_requests",
            "Requests judged against the model's SLA (served with a histogram, or failed)",
            labels=["model"],
        )
        good = CounterMetricFamily(
            "slatune_slo_requests_good",
            "Of the requests judged, those within the SLA's target",
            labels=["model"],
        )
        objective = GaugeMetricFamily(
            "slatune_slo_objective", "The fraction of requests the SLA wants within target", labels=["model"]
        )
        try:
            self.update()
            slas = self.slas()
        except Exception:  # a store outage must not break /metrics
            log.exception("SLO counters unavailable")
            return []
        for m, sla in sorted(slas.items()):
            if sla is None:
                continue
            requests.add_metric([m], self._requests.get(m, 0.0))
            good.add_metric([m], self._good.get(m, 0.0))
            objective.add_metric([m], sla.objective)
        return [requests, good, objective]


class TuningCollector(PromCollector):
    """The newest tuning run's trials, read from its Optuna study: the last measured trial's
    objective (bulk goodput) and SLA constraints (<= 0: kept), and its trials by state."""

    def __init__(self, store: Store, storage: Callable[[str], optuna.storages.BaseStorage]) -> None:
        self.store = store
        self.storage = storage

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        running = GaugeMetricFamily("slatune_tuning_running", "1 while a tuning run is running")
        trials = GaugeMetricFamily(
            "slatune_tuning_trials", "The newest tuning run's trials, by state", labels=["run", "state"]
        )
        objective = GaugeMetricFamily(
            "slatune_tuning_trial_objective",
            "The newest run's last measured trial: its objective (bulk goodput)",
            labels=["run"],
        )
        constraint = GaugeMetricFamily(
            "slatune_tuning_trial_constraint",
            "The newest run's last measured trial: each SLA constraint (<= 0 kept, > 0 broken by that much)",
            labels=["run", "constraint"],
        )
        number = GaugeMetricFamily(
            "slatune_tuning_last_trial", "The number of the newest run's last measured trial", labels=["run"]
        )
        try:
            with self.store.session() as session:
                run = session.scalars(select(TuningRun).order_by(TuningRun.id.desc()).limit(1)).first()
                found = None if run is None else (run.id, run.status, run.study_name, run.optuna_storage)
            running.add_metric([], 1.0 if found is not None and found[1] == "running" else 0.0)
            if found is not None:
                self._trials(found[0], found[2], found[3], trials, objective, constraint, number)
        except Exception:  # a store outage or an unreadable study must not break /metrics
            log.exception("tuning metrics unavailable")
        return [running, trials, objective, constraint, number]

    def _trials(self, run_id: int, study: str, url: str, *families: GaugeMetricFamily) -> None:
        trials, objective, constraint, number = families
        try:
            frozen = optuna.load_study(study_name=study, storage=self.storage(url)).get_trials(deepcopy=False)
        except KeyError:  # its study is not created yet
            return
        run = str(run_id)
        for state in TrialState:
            trials.add_metric([run, state.name.lower()], float(sum(t.state == state for t in frozen)))
        done = [t for t in frozen if t.state == TrialState.COMPLETE and "score" in t.user_attrs]
        if not done:
            return
        last = done[-1]
        score: Any = last.user_attrs["score"]  # tuner.loop.score_to_attr: goodput and violations by model
        number.add_metric([run], float(last.number))
        objective.add_metric([run], float(score["goodput"]))
        for model, value in sorted(score["violations"].items()):
            constraint.add_metric([run, f"sla:{model}"], float(value))


DIAGNOSIS_S = 60.0
"""The span the exported diagnosis reads (as `slatune diagnose` does by default)."""


class DiagnosisCollector(PromCollector):
    """The diagnosis of the last minute, computed when /metrics is scraped: what the dashboards show
    as the top finding per model."""

    def __init__(
        self,
        store: Store,
        spec: FleetSpec,
        knobs: Callable[[], Mapping[str, Knobs]],
        clock: Callable[[], float],
    ) -> None:
        self.store, self.spec, self.knobs, self.clock = store, spec, knobs, clock

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time

    def collect(self) -> list[Metric]:
        from controlplane.diagnosis import findings  # the control plane's reader of the store

        top = GaugeMetricFamily(
            "slatune_diagnosis_severity",
            "Severity of the top finding about a model or device over the last minute (0: nothing to say)",
            labels=["subject"],
        )
        firing = GaugeMetricFamily(
            "slatune_diagnosis_finding",
            "A finding of the diagnosis over the last minute, by kind: its severity (present while it fires)",
            labels=["subject", "kind"],
        )
        try:
            found = findings(self.store, self.spec, self.knobs(), self.clock(), DIAGNOSIS_S)
        except Exception as exc:  # the store down: say nothing rather than fail the scrape
            log.warning("diagnosis not exported: %s", exc)
            return []
        worst: dict[str, float] = {
            name: 0.0 for name in [*self.spec.model_names, *(d.name for d in self.spec.devices)]
        }
        for f in found:
            worst[f.subject] = max(worst.get(f.subject, 0.0), f.severity)
            firing.add_metric([f.subject, f.kind], f.severity)
        for subject, severity in sorted(worst.items()):
            top.add_metric([subject], severity)
        return [top, firing]
