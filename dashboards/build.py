"""slatune's Grafana dashboards, built with grafana-foundation-sdk (Grafana's typed builders):

- Fleet overview: per model (a row repeated for each), its request rate, its SLA metric (p99, or time
  to first token for a streaming model) against the SLA's line, queue time against compute time,
  average batch size, pending requests, failures by reason and the diagnosis's findings; per device, utilization and memory
  (Triton's `nv_gpu_*` where there is a GPU, `nv_cpu_*` on a CPU host) and slatune's planned memory
  against the device's budget;
- SLOs: per latency-critical model, attainment against the objective, the error budget left and the
  burn rates the multiwindow alerts read (dashboards/rules.py);
- Tuning and control: each model's knobs over time, the tuning trials' objective and constraints,
  the controller's level and actions, reconfigurations (also as annotations);
- Alerts: what fired (Prometheus's ALERTS), what reached slatune's webhook and what slatune did.

Every query reads a metric Triton or slatune exports, or a series the rules record; the tests parse
each one and run it against a real Prometheus scraping a real fleet and slatune.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from dashboards.rules import BURN_ALERTS, SLO_WINDOWS, burn

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
FOLDER_TITLE = "slatune"
FOLDER_UID = "slatune"
TAGS = ["slatune", "triton"]
RATE = "$__rate_interval"
M = 'model=~"$model"'


def query(expr: str, legend: str = "", ref: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def _targets(panel: Any, queries: Iterable[tuple[str, str]]) -> None:
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(query(expr, legend, chr(ord("A") + i)))


def series(
    title: str,
    description: str,
    queries: Iterable[tuple[str, str]],
    unit: str = "short",
    *,
    width: int = 8,
    height: int = 7,
    dashed: Iterable[str] = (),
    stacked: bool = False,
    min_value: float | None = None,
) -> timeseries.Panel:
    """A time series panel; series whose name matches a regexp in `dashed` are drawn as dashed
    lines (an SLA's line, a budget)."""
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10 if stacked else 0)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if stacked:
        p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if min_value is not None:
        p.min(min_value)
    _targets(p, queries)
    for pattern in dashed:
        p.override_by_regexp(
            pattern,
            [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=2),
            ],
        )
    return p


def single(title: str, description: str, expr: str, legend: str, unit: str, *, width: int = 6) -> stat.Panel:
    p = stat.Panel().title(title).description(description).datasource(DS).unit(unit).span(width).height(5)
    p.with_target(query(expr, legend))
    return p


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def label_variable(name: str, label: str, metric: str, key: str = "model") -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(f"label_values({metric}, {key})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(datasource_variable())
    )


# ---------------------------------------------------------------------------------------- fleet
def fleet_overview() -> db.Dashboard:
    d = base(
        "slatune-fleet",
        "slatune: fleet overview",
        "Per model: traffic, its SLA metric against the SLA, where the time goes (queue or compute), "
        "batching, queues and failures. Per device: utilization and memory.",
    ).with_variable(label_variable("model", "Model", "nv_inference_request_success"))
    ok = f"sum by (model) (rate(nv_inference_request_success{{{M}}}[{RATE}]))"
    row = db.Row("Model $model").repeat("model")
    row.with_panel(
        series(
            "Request rate",
            "Requests served and failed per second (Triton's counters).",
            [
                (ok, "served"),
                (f"sum by (model) (rate(nv_inference_request_failure{{{M}}}[{RATE}]))", "failed"),
                (f"sum by (model) (rate(nv_inference_count{{{M}}}[{RATE}]))", "items"),
            ],
            "reqps",
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "SLA metric against the SLA",
            "The SLA's metric as slatune judges it (time to first token p99 for a streaming model, else "
            "latency p99, over 30 s, from Triton's per-request traces) against the SLA's target (dashed); "
            "the p99 of the built-in models' own histograms, server side.",
            [
                (f"slatune_sla_value_ms{{{M}}}", "SLA metric (slatune, 30 s)"),
                (f"slatune_sla_target_ms{{{M}}}", "SLA target"),
                (
                    f"histogram_quantile(0.99, sum by (model, le) (rate(slatune_request_ms_bucket{{{M}}}[{RATE}])))",
                    "p99 latency (model histogram)",
                ),
                (
                    f"histogram_quantile(0.99, sum by (model, le) (rate(slatune_ttft_ms_bucket{{{M}}}[{RATE}])))",
                    "p99 TTFT (model histogram)",
                ),
            ],
            "ms",
            dashed=["SLA target"],
            min_value=0,
        )
    )
    compute = " + ".join(
        f"sum by (model) (rate(nv_inference_compute_{part}_duration_us{{{M}}}[{RATE}]))"
        for part in ("input", "infer", "output")
    )
    row.with_panel(
        series(
            "Queue time against compute time",
            "Average time per request waiting in Triton's queue against computing (input, infer, output): "
            "the split to read first. Queue time growing while compute stays flat is a scheduling problem "
            "(instances, priorities, rate limits), not a slow model.",
            [
                (
                    f"sum by (model) (rate(nv_inference_queue_duration_us{{{M}}}[{RATE}])) / {ok} / 1000",
                    "queue",
                ),
                (f"({compute}) / {ok} / 1000", "compute"),
            ],
            "ms",
            stacked=True,
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "Average batch size",
            "Inferences per execution: what dynamic batching achieves.",
            [
                (
                    f"sum by (model) (rate(nv_inference_count{{{M}}}[{RATE}])) / sum by (model) (rate(nv_inference_exec_count{{{M}}}[{RATE}]))",
                    "batch",
                )
            ],
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "Pending requests",
            "Requests waiting in Triton's queue (a reading below zero, which Triton 2.51 reports now and "
            "then, shows as none), and how long the oldest has waited when the queue does not move.",
            [
                (f"sum by (model) (clamp_min(nv_inference_pending_request_count{{{M}}}, 0))", "pending"),
                (f"slatune_queue_oldest_waiting_seconds{{{M}}}", "oldest waiting (s)"),
            ],
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "Failures by reason",
            "Failed requests per second by Triton's reason (REJECTED: queue full or timed out; BACKEND, "
            "CANCELED, OTHER).",
            [(f"sum by (model, reason) (rate(nv_inference_request_failure{{{M}}}[{RATE}]))", "{{reason}}")],
            "reqps",
            stacked=True,
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "Diagnosis",
            "The expert's findings about the model over the last minute (slatune diagnose: too few instances, "
            "batching window, interference, the step that gates a pipeline), by kind; the top one's severity. "
            "0: nothing to say.",
            # A finding exists only while it fires; the top severity always (0: nothing to say).
            [
                (
                    'slatune_diagnosis_finding{subject=~"$model"} or slatune_diagnosis_severity{subject=~"$model"}',
                    "{{kind}}",
                )
            ],
            min_value=0,
        )
    )
    d.with_row(row)
    devices = db.Row("Devices")
    devices.with_panel(
        series(
            "Utilization",
            "Each GPU's utilization (nv_gpu_utilization); on a host without a GPU, the CPU's (nv_cpu_utilization).",
            [
                (
                    'nv_gpu_utilization{job="triton"} or on (instance) nv_cpu_utilization{job="triton"}',
                    "{{server}} {{gpu_uuid}}",
                )
            ],
            "percentunit",
            min_value=0,
        )
    )
    devices.with_panel(
        series(
            "Memory used against total",
            "Memory used and the device's total (dashed), as Triton reports it: GPU memory, else the host's.",
            [
                (
                    'nv_gpu_memory_used_bytes{job="triton"} or on (instance) nv_cpu_memory_used_bytes{job="triton"}',
                    "{{server}} {{gpu_uuid}} used",
                ),
                (
                    'nv_gpu_memory_total_bytes{job="triton"} or on (instance) nv_cpu_memory_total_bytes{job="triton"}',
                    "{{server}} {{gpu_uuid}} total",
                ),
            ],
            "bytes",
            dashed=[".* total"],
            min_value=0,
        )
    )
    devices.with_panel(
        series(
            "Planned memory against budget",
            "What the models' instances hold on each device of the fleet spec (instances x memory per "
            "instance, as slatune plans it) against the device's budget (dashed).",
            [
                ("slatune_device_memory_planned_bytes", "{{device}} planned"),
                ("slatune_device_memory_budget_bytes", "{{device}} budget"),
            ],
            "bytes",
            dashed=[".* budget"],
            min_value=0,
        )
    )
    devices.with_panel(
        series(
            "Scrapes",
            "Whether Prometheus reaches each server and slatune (up), and the servers slatune's own "
            "collector cannot scrape (stale).",
            [("up", "{{job}} {{server}} up"), ("slatune_stale_servers", "stale servers (slatune)")],
            width=12,
            min_value=0,
        )
    )
    devices.with_panel(
        series(
            "Collector scrape failures",
            "slatune's collector: failed scrapes per second by server and reason.",
            [
                (
                    f"sum by (server, reason) (rate(slatune_scrape_failures_total[{RATE}]))",
                    "{{server}} {{reason}}",
                )
            ],
            width=12,
            min_value=0,
        )
    )
    return d.with_row(devices)


# ------------------------------------------------------------------------------------------ SLO
def slos() -> db.Dashboard:
    d = base(
        "slatune-slo",
        "slatune: SLOs",
        "Per latency-critical model: the fraction of requests within its SLA's target, the error "
        "budget left and how fast it burns (the windows the multiwindow alerts read).",
    ).with_variable(label_variable("model", "Model", "slatune_slo_objective"))
    row = db.Row("SLO $model").repeat("model")
    row.with_panel(
        single(
            "Attainment (SLA window)",
            "Requests within target over the SLA's rolling window (slatune judges it from the stored histograms).",
            f"slatune_slo_attainment{{{M}}}",
            "{{model}}",
            "percentunit",
        )
    )
    row.with_panel(
        single(
            "Error budget left (SLA window)",
            "1 - burn rate over the SLA's rolling window, no lower than 0.",
            f"slatune_slo_error_budget_remaining{{{M}}}",
            "{{model}}",
            "percentunit",
        )
    )
    good = f"sum by (model) (increase(slatune_slo_requests_good_total{{{M}}}[$__range]))"
    total = f"sum by (model) (increase(slatune_slo_requests_total{{{M}}}[$__range]))"
    objective = f"max by (model) (slatune_slo_objective{{{M}}})"
    row.with_panel(
        single(
            "Error budget left (dashboard range)",
            "1 - the fraction of requests not within target over the range shown, over 1 - objective.",
            f"1 - (1 - {good} / {total}) / on (model) (1 - {objective})",
            "{{model}}",
            "percentunit",
        )
    )
    row.with_panel(
        single(
            "Burn rate (SLA window)",
            "The fraction not within target over 1 - objective: 1 spends the budget exactly over the window.",
            f"slatune_slo_burn_rate{{{M}}}",
            "{{model}}",
            "short",
        )
    )
    row.with_panel(
        series(
            "Attainment against the objective",
            "Requests within target: over the SLA's rolling window (slatune), over 5 m and 1 h (from the "
            "SLO counters), against the objective (dashed).",
            [
                (f"slatune_slo_attainment{{{M}}}", "SLA window"),
                (f"1 - slatune:slo_error_ratio:rate5m{{{M}}}", "5m"),
                (f"1 - slatune:slo_error_ratio:rate1h{{{M}}}", "1h"),
                (f"slatune_slo_objective{{{M}}}", "objective"),
            ],
            "percentunit",
            width=12,
            dashed=["objective"],
        )
    )
    row.with_panel(
        series(
            "Burn rates",
            "The error budget's burn rate over each window the alerts read; the page thresholds (14.4x, "
            "6x) and ticket thresholds (3x, 1x) dashed.",
            [(f"{burn(w)}{{{M}}}", w) for w in SLO_WINDOWS]
            + [
                (f"vector({f:g})", f"threshold {f:g}x")
                for f in sorted({a[2] for a in BURN_ALERTS}, reverse=True)
            ],
            "short",
            width=12,
            dashed=["threshold .*"],
            min_value=0,
        )
    )
    row.with_panel(
        series(
            "SLA met (last 30 s)",
            "1 while the model meets its SLA over the last 30 s (what the SlaBroken alert reads), and "
            "requests judged per second.",
            [
                (f"slatune_sla_met{{{M}}}", "met"),
                (f"sum by (model) (rate(slatune_slo_requests_total{{{M}}}[{RATE}]))", "judged/s"),
            ],
            width=24,
            height=5,
            min_value=0,
        )
    )
    return d.with_row(row)


# --------------------------------------------------------------------------------------- tuning
KNOBS = (
    ("instances", "Instances", "Execution instances (instance_group.count)."),
    ("max_queue_delay_us", "Max queue delay (µs)", "dynamic_batching.max_queue_delay_microseconds."),
    ("priority", "Rate-limiter priority", "instance_group.rate_limiter.priority: 1 is scheduled most often."),
    ("compute_priority", "Compute priority", "optimization.priority: max 1, default 0, min -1."),
    ("max_batch_size", "Max batch size", "max_batch_size (0: the model's own)."),
    ("max_queue_size", "Max queue size", "default_queue_policy.max_queue_size (0: unbounded)."),
    (
        "queue_timeout_us",
        "Queue timeout (µs)",
        "default_queue_policy.default_timeout_microseconds (0: none).",
    ),
)


def reconfiguration_annotations(d: db.Dashboard) -> db.Dashboard:
    d.annotation(
        db.AnnotationQuery()
        .name("Reconfigurations")
        .datasource(DS)
        .enable(True)
        .icon_color("orange")
        .expr(
            'sum by (model, path) (increase(slatune_reconfigurations_total{outcome="applied"}[$__interval])) > 0'
        )
    )
    d.annotation(
        db.AnnotationQuery()
        .name("Controller actions")
        .datasource(DS)
        .enable(True)
        .icon_color("purple")
        .expr("sum by (kind, applied) (increase(slatune_controller_actions_total[$__interval])) > 0")
    )
    return d


# The annotations' title and tags, which the SDK's schema has no field for: added to the built JSON.
ANNOTATION_FORMAT = {
    "Reconfigurations": {"titleFormat": "{{model}} reconfigured ({{path}})", "tagKeys": "model,path"},
    "Controller actions": {"titleFormat": "controller: {{kind}}", "tagKeys": "kind,applied"},
}


def tuning() -> db.Dashboard:
    d = base(
        "slatune-tuning",
        "slatune: tuning and control",
        "Each model's knobs over time, the tuning trials, the SLO controller, and every reconfiguration "
        "(also as annotations).",
    ).with_variable(label_variable("model", "Model", "slatune_model_knob"))
    reconfiguration_annotations(d)
    knobs = db.Row("Knobs")
    for knob, title, desc in KNOBS:
        knobs.with_panel(
            series(
                title, desc, [(f'slatune_model_knob{{knob="{knob}", {M}}}', "{{model}}")], width=6, height=6
            )
        )
    knobs.with_panel(
        series(
            "Rate-limiter resources",
            "instance_group.rate_limiter.resources each instance must hold (0: takes none).",
            [(f'slatune_model_knob{{knob=~"resources[.].*", {M}}}', "{{model}} {{knob}}")],
            width=6,
            height=6,
        )
    )
    d.with_row(knobs)
    control = db.Row("Controller and reconciler")
    control.with_panel(
        series(
            "Controller",
            "The protective rungs in force on the incumbent, whether a neighbour is being tried, and the mode.",
            [
                ("slatune_controller_level", "level"),
                ("slatune_controller_exploring", "exploring"),
                ("slatune_controller_mode == 1", "mode {{mode}}"),
            ],
            min_value=0,
        )
    )
    control.with_panel(
        series(
            "Controller actions",
            "Actions per minute by kind, applied or advisory (advisory: recorded, not done).",
            [
                (
                    "sum by (kind, applied) (increase(slatune_controller_actions_total[1m]))",
                    "{{kind}} applied={{applied}}",
                )
            ],
            min_value=0,
        )
    )
    control.with_panel(
        series(
            "Reconfigurations",
            "Desired configurations the reconciler settled per minute, by outcome and path (in place, "
            "reload), failures by kind, and those waiting.",
            [
                (
                    "sum by (outcome, path) (increase(slatune_reconfigurations_total[1m]))",
                    "{{outcome}} {{path}}",
                ),
                ("sum by (kind) (increase(slatune_reconcile_failures_total[1m]))", "failed {{kind}}"),
                ("slatune_desired_pending", "pending"),
            ],
            min_value=0,
        )
    )
    control.with_panel(
        series(
            "Apply time",
            "p50 and p99 of one apply through Triton's model-repository API.",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate(slatune_apply_seconds_bucket[5m])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            "s",
            width=12,
            min_value=0,
        )
    )
    d.with_row(control)
    trials = db.Row("Tuning")
    trials.with_panel(
        series(
            "Trial objective",
            "The newest tuning run's last measured trial: bulk goodput (what the tuner maximizes).",
            [
                ("slatune_tuning_trial_objective", "run {{run}} goodput"),
                ("slatune_tuning_running", "running"),
            ],
            width=8,
            min_value=0,
        )
    )
    trials.with_panel(
        series(
            "Trial constraints",
            "The last measured trial's SLA constraints: <= 0 kept, above 0 broken by that much.",
            [("slatune_tuning_trial_constraint", "run {{run}} {{constraint}}"), ("vector(0)", "kept below")],
            width=8,
            dashed=["kept below"],
        )
    )
    trials.with_panel(
        series(
            "Trials",
            "The newest run's trials by state, and the last one measured.",
            [("slatune_tuning_trials", "{{state}}"), ("slatune_tuning_last_trial", "last measured")],
            width=8,
            min_value=0,
        )
    )
    return d.with_row(trials)


# --------------------------------------------------------------------------------------- alerts
def alerts() -> db.Dashboard:
    d = base(
        "slatune-alerts",
        "slatune: alerts",
        "What fired in Prometheus, what reached slatune's webhook, and what slatune did about it.",
    )
    reconfiguration_annotations(d)
    firing = (
        table.Panel()
        .title("Firing now")
        .description("Alerts Prometheus has firing or pending (ALERTS), by name, model and severity.")
        .datasource(DS)
        .span(24)
        .height(7)
    )
    firing.with_target(
        query("sum by (alertname, model, severity, alertstate) (ALERTS)", "{{alertname}}")
        .instant()
        .format(pm.PromQueryFormat.TABLE)
    )
    d.with_panel(firing)
    d.with_panel(
        series(
            "Alerts by name",
            "Alerts firing (1 per alert and label set) over time.",
            [('sum by (alertname, model) (ALERTS{alertstate="firing"})', "{{alertname}} {{model}}")],
            width=12,
            min_value=0,
        )
    )
    d.with_panel(
        series(
            "Received by slatune",
            "Alerts Alertmanager delivered to slatune's webhook per minute, by name and status.",
            [
                (
                    "sum by (alertname, status) (increase(slatune_alerts_received_total[1m]))",
                    "{{alertname}} {{status}}",
                )
            ],
            width=12,
            min_value=0,
        )
    )
    d.with_panel(
        series(
            "What slatune did",
            "The alert policy's decisions per minute (controller: handed to the SLO controller; propose: a "
            "fallback to a configuration measured safe; none), the controller's actions, and the "
            "reconfigurations applied.",
            [
                ("sum by (action) (increase(slatune_policy_decisions_total[1m]))", "policy {{action}}"),
                ("sum by (kind) (increase(slatune_controller_actions_total[1m]))", "controller {{kind}}"),
                (
                    'sum (increase(slatune_reconfigurations_total{outcome="applied"}[1m]))',
                    "reconfigurations applied",
                ),
            ],
            width=24,
            min_value=0,
        )
    )
    return d


DASHBOARDS = {"fleet-overview": fleet_overview, "slo": slos, "tuning": tuning, "alerts": alerts}


def render() -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana's JSON model, by file stem."""
    out = {}
    for stem, build in DASHBOARDS.items():
        model: dict[str, Any] = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        for a in model.get("annotations", {}).get("list", []):
            a.update(ANNOTATION_FORMAT.get(a.get("name"), {}))
        out[stem] = model
    return out


def dumps(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expressions(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of a dashboard: panel targets (rows' panels included),
    annotations and query variables (Grafana's `label_values(metric, label)` as the PromQL it asks
    for: `group by (label) (metric)`)."""
    out = []

    def panels(ps: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(model.get("panels", [])):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for a in model.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in model.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            metric, label = v["query"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            out.append((f"variable {v['name']!r}", f"group by ({label.strip()}) ({metric.strip()})"))
    return out
