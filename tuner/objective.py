"""Scoring a measured configuration: bulk goodput to maximise, one SLA constraint per
latency-critical model, memory as the tie-breaker. Pure: measurements and knobs in, a score out.

Constraint values follow Optuna's convention: a value <= 0 is satisfied. Each is the relative
excess over the SLA target, or the fraction of failed requests when larger: a configuration that
fails requests does not meet its SLA however fast the rest were. A model with an SLA but nothing
measured is not known to be safe, so it counts as broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from domain.spec import FleetSpec, Knobs, device_memory_used

UNMEASURED = 1.0  # the violation of an SLA that could not be measured
MEMORY_TIEBREAK_PER_GB = 0.01  # goodput (items/s) one GB of memory is worth: a tie-breaker only


@dataclass(frozen=True)
class Measured:
    """One model over one measurement window."""

    requests: float
    failures: float
    items_per_s: float
    """Successful items per second (bulk goodput for a bulk model)."""
    p99_ms: float | None = None
    ttft_p99_ms: float | None = None


@dataclass(frozen=True)
class Score:
    bulk_goodput: float
    violations: dict[str, float]
    memory_gb: float

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations.values())

    @property
    def objective(self) -> float:
        """What the study maximises: goodput, less a sliver per GB so that of two equal
        configurations the smaller wins."""
        return self.bulk_goodput - MEMORY_TIEBREAK_PER_GB * self.memory_gb

    def constraints(self) -> list[float]:
        """For Optuna's constraints_func, in model-name order."""
        return [self.violations[k] for k in sorted(self.violations)]


def violation(target_ms: float, value_ms: float | None, m: Measured | None) -> float:
    if m is None or m.requests <= 0 or value_ms is None:
        return UNMEASURED
    excess = (value_ms - target_ms) / target_ms
    return max(excess, m.failures / m.requests) if m.failures > 0 else excess


def score(spec: FleetSpec, measured: Mapping[str, Measured], knobs: Mapping[str, Knobs]) -> Score:
    goodput = sum(
        measured[m.name].items_per_s for m in spec.models if m.role == "bulk" and m.name in measured
    )
    violations = {}
    for m in spec.models:
        if m.sla is None:
            continue
        got = measured.get(m.name)
        value = None if got is None else m.sla.value_of(p99_ms=got.p99_ms, ttft_p99_ms=got.ttft_p99_ms)
        violations[m.name] = violation(m.sla.target_ms, value, got)
    return Score(goodput, violations, sum(device_memory_used(spec, knobs).values()))


def breaks_badly(spec: FleetSpec, measured: Mapping[str, Measured], factor: float = 2.0) -> list[str]:
    """Latency-critical models whose SLA a (partial) window breaks by more than `factor` times its
    target: the trial is cut short and the best known safe configuration restored."""
    out = []
    for m in spec.models:
        got = measured.get(m.name)
        if m.role != "latency-critical" or m.sla is None or got is None or got.requests <= 0:
            continue
        value = m.sla.value_of(p99_ms=got.p99_ms, ttft_p99_ms=got.ttft_p99_ms)
        if value is not None and value > factor * m.sla.target_ms:
            out.append(m.name)
    return out
