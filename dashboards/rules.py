"""slatune's Prometheus rules, as data: the recording rules for SLO error ratios and burn rates, and
the alerts. `python -m dashboards` writes them to deploy/prometheus/slatune-rules.yml (committed;
a unit test fails when the file and this module differ), and `slatune prometheus config` copies
them beside the scrape configuration.

The SLO alerts are the SRE workbook's multiwindow, multi-burn-rate alerts (chapter 5, "Alerting on
SLOs"), over slatune's SLO counters (`slatune_slo_requests_total`, `slatune_slo_requests_good_total`,
controlplane/exported.py): a page when the budget burns at 14.4x over 1 h and 5 m (2% of a 30-day
budget in an hour) or at 6x over 6 h and 30 m (5% in 6 h); a ticket at 3x over 1 d and 2 h or at 1x
over 3 d and 6 h. The short window makes an alert stop soon after the burn does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

ERROR_RATIO = "slatune:slo_error_ratio:rate{w}"
BURN_RATE = "slatune:slo_burn_rate:rate{w}"

# (long window, short window, burn-rate factor, severity), from the SRE workbook's table 5-8
BURN_ALERTS: tuple[tuple[str, str, float, str], ...] = (
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6.0, "page"),
    ("1d", "2h", 3.0, "ticket"),
    ("3d", "6h", 1.0, "ticket"),
)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    summary: str
    severity: str = "ticket"
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_:
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity, **self.labels}
        out["annotations"] = {"summary": self.summary}
        return out


def burn(window: str) -> str:
    return BURN_RATE.format(w=window)


def recording_rules() -> list[dict[str, str]]:
    """The error ratio (requests not within target, failures included) and the burn rate (that over
    1 - objective) of every SLA, over each window the burn alerts read."""
    rules = []
    for w in SLO_WINDOWS:
        rules.append(
            {
                "record": ERROR_RATIO.format(w=w),
                "expr": f"1 - sum by (model) (rate(slatune_slo_requests_good_total[{w}])) / "
                f"sum by (model) (rate(slatune_slo_requests_total[{w}]))",
            }
        )
    for w in SLO_WINDOWS:
        rules.append(
            {
                "record": burn(w),
                "expr": f"{ERROR_RATIO.format(w=w)} / on (model) (1 - max by (model) (slatune_slo_objective))",
            }
        )
    return rules


def _burn_expr(alerts: list[tuple[str, str, float, str]]) -> str:
    return " or ".join(f"({burn(long)} > {f:g} and {burn(short)} > {f:g})" for long, short, f, _ in alerts)


def alerts() -> list[Alert]:
    page = [a for a in BURN_ALERTS if a[3] == "page"]
    ticket = [a for a in BURN_ALERTS if a[3] == "ticket"]
    total = "(sum by (model) (rate(nv_inference_request_success[5m])) + sum by (model) (rate(nv_inference_request_failure[5m])))"
    return [
        # slatune_sla_met{model} is 1 or 0 over the last 30 s of the store's windows; it is absent
        # while a model has no traffic to tell. A firing alert about a latency-critical model goes to
        # the SLO controller (on), else falls back to the newest tuning run's best configuration.
        Alert("SlaBroken", "slatune_sla_met == 0", "{{ $labels.model }} is breaking its SLA", "page", "30s"),
        Alert(
            "SloErrorBudgetBurnFast",
            _burn_expr(page),
            "{{ $labels.model }} burns its error budget fast (14.4x over 1h and 5m, or 6x over 6h and 30m)",
            "page",
        ),
        Alert(
            "SloErrorBudgetBurnSlow",
            _burn_expr(ticket),
            "{{ $labels.model }} burns its error budget (3x over 1d and 2h, or 1x over 3d and 6h)",
        ),
        Alert(
            "TritonFailureRate",
            f"sum by (model, reason) (rate(nv_inference_request_failure[5m])) / on (model) group_left () {total} > 0.01",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests fail ({{ $labels.reason }})",
            for_="5m",
        ),
        Alert(
            "TritonPendingRequestsGrowing",
            "sum by (model) (clamp_min(nv_inference_pending_request_count, 0)) > 8 "
            "and sum by (model) (deriv(nv_inference_pending_request_count[2m])) > 0",
            "{{ $labels.model }}: more than 8 requests wait and the queue keeps growing",
            for_="2m",
        ),
        Alert(
            "SlatuneQueueStuck",
            "slatune_queue_oldest_waiting_seconds > 30",
            "{{ $labels.model }}: a request has waited {{ $value }} s and the queue has not moved",
            "page",
            "30s",
        ),
        Alert(
            "DeviceMemoryNearBudget",
            "slatune_device_memory_planned_bytes / on (device) slatune_device_memory_budget_bytes > 0.95",
            "device {{ $labels.device }}: the models' instances plan {{ $value | humanizePercentage }} of its budget",
        ),
        Alert(
            "DeviceMemoryNearFull",
            "((nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes) "
            "or on (instance) (nv_cpu_memory_used_bytes / nv_cpu_memory_total_bytes)) > 0.95",
            "{{ $labels.server }}: {{ $value | humanizePercentage }} of the device's memory is used (GPU; host memory without one)",
            for_="5m",
        ),
        Alert(
            "TritonTargetDown",
            'up{job="triton"} == 0',
            "Prometheus cannot scrape Triton server {{ $labels.server }}",
            "page",
            "1m",
        ),
        Alert(
            "SlatuneCollectorStale",
            "slatune_stale_servers > 0",
            "slatune's collector cannot scrape {{ $value }} server(s): their windows stop",
            for_="1m",
        ),
        Alert(
            "SlatuneCollectorStalled",
            "rate(slatune_windows_written_total[2m]) == 0",
            "slatune's collector wrote no window for 2 minutes (store down, or the collector stopped)",
            "page",
            "2m",
        ),
        Alert(
            "SlatuneReconcileFailing",
            'increase(slatune_reconcile_failures_total{kind="permanent"}[10m]) > 0',
            "a configuration of {{ $labels.model }} was refused; see its history in the API",
        ),
        Alert(
            "SlatuneReconcileStuck",
            "slatune_desired_pending > 0",
            "{{ $value }} desired configuration(s) have waited 10 minutes to be applied",
            for_="10m",
        ),
    ]


def rule_groups() -> dict[str, Any]:
    return {
        "groups": [
            {"name": "slatune-slo", "rules": recording_rules()},
            {"name": "slatune", "rules": [a.rule() for a in alerts()]},
        ]
    }


HEADER = """\
# Generated by `python -m dashboards` from dashboards/rules.py: edit that, not this file.
# slatune's Prometheus rules: SLO error ratios and burn rates (recorded), and the alerts. Scrape the
# control plane's /metrics and every Triton server (job "triton"); route the alerts to slatune's
# webhook (alertmanager.yml, or `slatune prometheus config`).
"""


def rules_yaml() -> str:
    return HEADER + yaml.safe_dump(rule_groups(), sort_keys=False, width=10_000, allow_unicode=True)


def expressions() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every rule, recording and alerting."""
    out = [(r["record"], r["expr"]) for r in recording_rules()]
    return out + [(a.name, a.expr) for a in alerts()]
