"""What an alert asks the fleet to do: a pure decision, no I/O.

A firing alert about a latency-critical model (its SLA is breaking) falls back to the last
configuration a tuning run proved to keep every SLA, for the models whose knobs differ from it.
Anything else (a resolved alert, a bulk model, no proven configuration, already running it) is
recorded and changes nothing. The proposal still passes the guardrails, like every other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from domain.spec import FleetSpec, Knobs


@dataclass(frozen=True)
class Alert:
    name: str
    status: str  # "firing" or "resolved"
    model: str | None


@dataclass(frozen=True)
class KnownGood:
    """The best feasible configuration of a completed tuning run."""

    run_id: int
    knobs: Mapping[str, Knobs]


@dataclass(frozen=True)
class Decision:
    proposed: dict[str, Knobs] = field(default_factory=dict)
    """Only the models whose knobs change; empty: nothing to do."""
    reason: str = ""


def concerns_slo(spec: FleetSpec, alert: Alert) -> bool:
    """A firing alert about a latency-critical model of this fleet: an SLA at risk."""
    return (
        alert.status == "firing"
        and alert.model in spec.model_names
        and spec.model(alert.model).role == "latency-critical"
    )


def on_alert(
    spec: FleetSpec, alert: Alert, current: Mapping[str, Knobs], known_good: KnownGood | None
) -> Decision:
    if alert.status != "firing":
        return Decision(reason=f"{alert.name} is {alert.status}: nothing to do")
    if alert.model is None or alert.model not in spec.model_names:
        return Decision(reason=f"{alert.name} names no model of this fleet (label model={alert.model!r})")
    if spec.model(alert.model).role != "latency-critical":
        return Decision(reason=f"{alert.name} is about {alert.model}, a bulk model: no SLA to protect")
    if known_good is None:
        return Decision(reason=f"{alert.name} on {alert.model}: no tuning run has proved a configuration yet")
    changes = {
        name: knobs for name, knobs in known_good.knobs.items() if name in current and current[name] != knobs
    }
    if not changes:
        return Decision(
            reason=f"{alert.name} on {alert.model}: already running tuning run {known_good.run_id}'s best"
        )
    return Decision(
        changes,
        f"alert {alert.name} on {alert.model}: back to tuning run {known_good.run_id}'s best configuration",
    )
