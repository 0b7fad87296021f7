"""Statistics of measured requests: per-request records in, per-model summaries out.

The load generator records every request it sends; benchmarks and the command line summarise those
records here. Pure: no clock, no network; the one percentile definition every summary uses lives
in `percentile`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from domain.spec import Sla


@dataclass(frozen=True)
class Record:
    model: str
    started: float  # monotonic seconds
    latency: float
    ttft: float | None
    items: int
    error: str | None = None  # failure reason, None when it succeeded


@dataclass
class ModelStats:
    model: str
    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    goodput: float = 0.0
    """Successful items per second."""
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    sla_metric: str | None = None
    sla_target_ms: float | None = None
    sla_value_ms: float | None = None
    sla_met: bool | None = None


@dataclass
class LoadReport:
    duration_s: float
    models: dict[str, ModelStats]
    errors: dict[str, str] = field(default_factory=dict)
    """One example message per failure reason."""

    @property
    def failed(self) -> int:
        return sum(sum(s.failed.values()) for s in self.models.values())

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.models.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "sent": self.sent,
            "failed": self.failed,
            "models": {k: asdict(v) for k, v in self.models.items()},
            "errors": self.errors,
        }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between the two nearest ranks (numpy's
    default, and what `statistics.quantiles(method="inclusive")` gives); None for no values."""
    data = list(values)
    if not data:
        return None
    return float(np.percentile(np.asarray(data), q))


def summarize(
    records: Iterable[Record], duration: float, slas: Mapping[str, Sla | None], models: Iterable[str] = ()
) -> dict[str, ModelStats]:
    """Per-model statistics of a set of request records over `duration` seconds."""
    by_model: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    out = {}
    for name in sorted(set(by_model) | set(models)):
        rs = by_model.get(name, [])
        good = [r for r in rs if r.error is None]
        lat = [r.latency * 1000 for r in good]
        ttft = [r.ttft * 1000 for r in good if r.ttft is not None]
        s = ModelStats(
            model=name,
            sent=len(rs),
            ok=len(good),
            failed=dict(Counter(r.error for r in rs if r.error is not None)),
            rate=len(rs) / duration if duration > 0 else 0.0,
            goodput=sum(r.items for r in good) / duration if duration > 0 else 0.0,
            latency_p50_ms=percentile(lat, 50),
            latency_p99_ms=percentile(lat, 99),
            ttft_p50_ms=percentile(ttft, 50),
            ttft_p99_ms=percentile(ttft, 99),
        )
        sla = slas.get(name)
        if sla is not None:
            s.sla_metric = sla.metric
            s.sla_target_ms = sla.target_ms
            s.sla_value_ms = sla.value_of(p99_ms=s.latency_p99_ms, ttft_p99_ms=s.ttft_p99_ms)
            s.sla_met = s.sla_value_ms is not None and s.sla_value_ms <= sla.target_ms and not s.failed
        out[name] = s
    return out


def format_ms(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.1f}"
