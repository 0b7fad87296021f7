"""Repository functions: each takes a session and never commits (`Store.session()` does)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from collectors.parse import Histogram
from collectors.window import DeviceWindow, ModelWindow, histogram_quantile
from store import configs
from store.models import ConfigVersion, DeviceWindowRow, MetricWindow, Model, Server


@dataclass(frozen=True)
class ServerInfo:
    name: str
    grpc_url: str
    metrics_url: str
    managed: bool


@dataclass(frozen=True)
class ModelInfo:
    name: str
    server: str
    role: str
    device: str
    sla_metric: str | None
    sla_target_ms: float | None


def sync_fleet(
    session: Session, servers: Iterable[ServerInfo], models: Iterable[ModelInfo]
) -> dict[str, int]:
    """Make the servers and models rows match the fleet; return model ids by name."""
    server_ids = {}
    for s in servers:
        row = session.scalar(select(Server).where(Server.name == s.name))
        if row is None:
            row = Server(name=s.name, grpc_url=s.grpc_url, metrics_url=s.metrics_url, managed=s.managed)
            session.add(row)
        else:
            row.grpc_url, row.metrics_url, row.managed = s.grpc_url, s.metrics_url, s.managed
        session.flush()
        server_ids[s.name] = row.id
    ids = {}
    for m in models:
        mrow = session.scalar(select(Model).where(Model.name == m.name))
        values = dict(server_id=server_ids[m.server], role=m.role, device=m.device,
                      sla_metric=m.sla_metric, sla_target_ms=m.sla_target_ms)  # fmt: skip
        if mrow is None:
            mrow = Model(name=m.name, **values)
            session.add(mrow)
        else:
            for k, v in values.items():
                setattr(mrow, k, v)
        session.flush()
        ids[m.name] = mrow.id
    return ids


def model_ids(session: Session) -> dict[str, int]:
    return {name: id_ for name, id_ in session.execute(select(Model.name, Model.id))}


@dataclass(frozen=True)
class AppliedVersion:
    id: int
    applied_at: float


def record_applied(
    session: Session, model: str, knobs: Mapping[str, Any], actor: str, reason: str, at: float
) -> AppliedVersion:
    """Record that `knobs` now run on `model` (the previous applied version is superseded)."""
    row = ConfigVersion(model_id=model_ids(session)[model], knobs=dict(knobs), actor=actor, reason=reason,
                        state="applied", created_at=at)  # fmt: skip
    session.add(row)
    session.flush()
    configs.mark_applied(session, row, at)
    return AppliedVersion(row.id, at)


def applied_versions(session: Session) -> dict[str, AppliedVersion]:
    """Each model's configuration version in force now."""
    return {name: AppliedVersion(v.id, v.applied_at or 0.0) for name, v in configs.applied(session).items()}


def version_of_window(version: AppliedVersion | None, start: float, end: float) -> tuple[int | None, bool]:
    """The configuration version a window belongs to, and whether a reconfiguration fell inside it
    (then it belongs to none, so no trial is scored with another trial's traffic)."""
    if version is None:
        return None, False
    if start < version.applied_at <= end:
        return None, True
    return version.id, False


_WINDOW_FIELDS = (
    "start end requests success failures request_rate inference_rate avg_batch avg_request_ms avg_queue_ms "
    "avg_compute_input_ms avg_compute_infer_ms avg_compute_output_ms p50_ms p90_ms p99_ms latency_source ttft_p50_ms "
    "ttft_p99_ms ttft_source pending reset"
).split()


def add_windows(
    session: Session,
    ids: Mapping[str, int],
    windows: Iterable[ModelWindow],
    versions: Mapping[str, AppliedVersion],
    resolution_s: float,
) -> int:
    rows = []
    for w in windows:
        if w.model not in ids:
            continue
        version_id, spans = version_of_window(versions.get(w.model), w.start, w.end)
        row = {f: getattr(w, f) for f in _WINDOW_FIELDS}
        row["latency_buckets"] = buckets_to_json(w.latency_buckets)
        row["ttft_buckets"] = buckets_to_json(w.ttft_buckets)
        row.update(
            model_id=ids[w.model],
            config_version_id=version_id,
            spans_reconfiguration=spans,
            resolution_s=resolution_s,
        )
        rows.append(row)
    if rows:  # one multi-row INSERT: ORM objects cost more than the database here
        session.execute(insert(MetricWindow), rows)
    return len(rows)


def buckets_to_json(buckets: Mapping[float, float]) -> dict[str, float]:
    """JSON keys are strings; +Inf is "inf"."""
    return {("inf" if math.isinf(le) else repr(le)): count for le, count in buckets.items()}


def summed_buckets(rows: Iterable[Mapping[str, float] | None]) -> Histogram:
    """The histogram of many windows: their buckets added up (the quantile of the union)."""
    total: dict[float, float] = {}
    for buckets in rows:
        for le, count in (buckets or {}).items():
            key = float(le)
            total[key] = total.get(key, 0.0) + count
    return Histogram(total, total.get(math.inf, 0.0))


def add_device_windows(
    session: Session, windows: Iterable[DeviceWindow], server_id: int | None = None
) -> int:
    rows = [
        DeviceWindowRow(
            server_id=server_id,
            device=w.device,
            kind=w.kind,
            source=w.source,
            start=w.start,
            end=w.end,
            utilization=w.utilization,
            memory_used_bytes=w.memory_used_bytes,
            memory_total_bytes=w.memory_total_bytes,
            power_w=w.power_w,
            processes=dict(w.processes),
        )
        for w in windows
    ]
    session.add_all(rows)
    return len(rows)


def windows(
    session: Session,
    model: str,
    start: float | None = None,
    end: float | None = None,
    config_version: int | None = None,
) -> Sequence[MetricWindow]:
    """A model's windows that ended in [start, end], or those of one configuration version,
    oldest first."""
    q = select(MetricWindow).join(Model, Model.id == MetricWindow.model_id).where(Model.name == model)
    if start is not None:
        q = q.where(MetricWindow.end >= start)
    if end is not None:
        q = q.where(MetricWindow.end <= end)
    if config_version is not None:
        q = q.where(MetricWindow.config_version_id == config_version)
    return session.scalars(q.order_by(MetricWindow.end)).all()


@dataclass(frozen=True)
class Aggregate:
    """Windows summed up: totals and rates over their span, the worst latency quantiles."""

    windows: int
    seconds: float
    requests: float
    success: float
    failures: dict[str, float] = field(default_factory=dict)
    request_rate: float = 0.0
    inference_rate: float = 0.0
    avg_queue_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    """Over all the windows: exact from their summed histograms where they have them, else the
    worst window's (Triton's summary)."""
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    resets: int = 0
    spans_reconfiguration: int = 0


def window_page(
    session: Session,
    model: str,
    *,
    columns: Mapping[str, str],
    start: float | None = None,
    end: float | None = None,
    limit: int = 500,
) -> list[Any]:
    """The newest `limit` windows of a model that ended in [start, end], oldest first, as rows of
    `columns` (label -> MetricWindow column): what an API page shows, without whole ORM objects."""
    q = (
        select(*(getattr(MetricWindow, col).label(label) for label, col in columns.items()))
        .join(Model, Model.id == MetricWindow.model_id)
        .where(Model.name == model)
    )
    if start is not None:
        q = q.where(MetricWindow.end >= start)
    if end is not None:
        q = q.where(MetricWindow.end <= end)
    return list(reversed(session.execute(q.order_by(MetricWindow.end.desc()).limit(limit)).all()))


AGGREGATE_COLUMNS = (
    "start end requests success failures inference_rate avg_queue_ms p50_ms p99_ms ttft_p50_ms ttft_p99_ms "
    "latency_buckets ttft_buckets reset spans_reconfiguration"
).split()
"""What `aggregate` reads of a window."""


def recent_windows(session: Session, since: float) -> dict[str, list[Any]]:
    """Every model's windows that ended at or after `since`, oldest first, as rows of the columns
    `aggregate` reads (not whole ORM objects: several times cheaper to load)."""
    q = (
        select(Model.name, *(getattr(MetricWindow, c) for c in AGGREGATE_COLUMNS))
        .join(Model, Model.id == MetricWindow.model_id)
        .where(MetricWindow.end >= since)
        .order_by(MetricWindow.end)
    )
    out: dict[str, list[Any]] = {}
    for row in session.execute(q):
        out.setdefault(row.name, []).append(row)
    return out


def aggregate(rows: Sequence[Any]) -> Aggregate:
    """Sum up windows: MetricWindow objects, or rows with their AGGREGATE_COLUMNS."""
    if not rows:
        return Aggregate(0, 0.0, 0.0, 0.0)
    seconds = sum(r.end - r.start for r in rows)
    failures: dict[str, float] = {}
    for r in rows:
        for k, v in (r.failures or {}).items():
            failures[k] = failures.get(k, 0.0) + v
    success = sum(r.success for r in rows)
    queue = [(r.avg_queue_ms, r.success) for r in rows if r.avg_queue_ms is not None and r.success > 0]
    return Aggregate(
        windows=len(rows),
        seconds=seconds,
        requests=sum(r.requests for r in rows),
        success=success,
        failures=failures,
        request_rate=sum(r.requests for r in rows) / seconds if seconds > 0 else 0.0,
        inference_rate=sum(r.inference_rate * (r.end - r.start) for r in rows) / seconds
        if seconds > 0
        else 0.0,
        avg_queue_ms=sum(q * n for q, n in queue) / sum(n for _, n in queue) if queue else None,
        p50_ms=_quantile(0.5, rows, "latency_buckets", "p50_ms"),
        p99_ms=_quantile(0.99, rows, "latency_buckets", "p99_ms"),
        ttft_p50_ms=_quantile(0.5, rows, "ttft_buckets", "ttft_p50_ms"),
        ttft_p99_ms=_quantile(0.99, rows, "ttft_buckets", "ttft_p99_ms"),
        resets=sum(r.reset for r in rows),
        spans_reconfiguration=sum(r.spans_reconfiguration for r in rows),
    )


def _quantile(q: float, rows: Sequence[Any], buckets: str, fallback: str) -> float | None:
    summed = summed_buckets(getattr(r, buckets) for r in rows)
    if summed.count > 0:
        return histogram_quantile(q, summed)
    return _max(getattr(r, fallback) for r in rows)


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return max(present) if present else None


def downsample(session: Session, older_than: float, bucket_s: float = 60.0) -> int:
    """Replace raw windows that ended before `older_than` by one window per model, configuration
    version and `bucket_s` bucket: counts and rates are summed over time, latencies keep their
    worst value. Returns the raw windows removed."""
    raw = session.scalars(
        select(MetricWindow)
        .where(MetricWindow.end < older_than, MetricWindow.resolution_s < bucket_s)
        .order_by(MetricWindow.model_id, MetricWindow.end)
    ).all()
    groups: dict[tuple[int, int | None, bool, float], list[MetricWindow]] = {}
    for r in raw:
        key = (
            r.model_id,
            r.config_version_id,
            r.spans_reconfiguration,
            math.floor(r.end / bucket_s) * bucket_s,
        )
        groups.setdefault(key, []).append(r)
    for (model_id, version_id, spans, _), rows in groups.items():
        agg = aggregate(rows)
        batches = [(r.avg_batch, r.requests) for r in rows if r.avg_batch is not None and r.requests > 0]
        session.add(
            MetricWindow(
                model_id=model_id,
                start=min(r.start for r in rows),
                end=max(r.end for r in rows),
                resolution_s=bucket_s,
                config_version_id=version_id,
                spans_reconfiguration=spans,
                reset=agg.resets > 0,
                requests=agg.requests,
                success=agg.success,
                failures=agg.failures,
                request_rate=agg.request_rate,
                inference_rate=agg.inference_rate,
                avg_batch=sum(b * n for b, n in batches) / sum(n for _, n in batches) if batches else None,
                avg_queue_ms=agg.avg_queue_ms,
                p50_ms=agg.p50_ms,
                p90_ms=_quantile(0.9, rows, "latency_buckets", "p90_ms"),
                p99_ms=agg.p99_ms,
                latency_buckets=buckets_to_json(summed_buckets(r.latency_buckets for r in rows).buckets),
                ttft_buckets=buckets_to_json(summed_buckets(r.ttft_buckets for r in rows).buckets),
                ttft_p50_ms=agg.ttft_p50_ms,
                ttft_p99_ms=agg.ttft_p99_ms,
                ttft_source=next((r.ttft_source for r in rows if r.ttft_source), None),
                latency_source=next((r.latency_source for r in rows if r.latency_source), None),
                pending=rows[-1].pending,
            )
        )
    if raw:
        session.execute(delete(MetricWindow).where(MetricWindow.id.in_([r.id for r in raw])))
    return len(raw)


def window_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(MetricWindow)) or 0)
