"""Repository functions: each takes a session and never commits (`Store.session()` does)."""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from domain import windows as window_maths
from domain.spec import DEFAULT_SLO_OBJECTIVE, DEFAULT_SLO_WINDOW_S
from domain.windows import AGGREGATE_FIELDS, AppliedVersion, DeviceWindow, ModelWindow, version_of_window
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
    sla_metric: str | None = None
    sla_target_ms: float | None = None
    sla_window_s: float | None = None
    sla_objective: float | None = None
    """The SLA's rolling window and objective (None: `domain.spec.Sla`'s defaults)."""

    @property
    def sla_columns(self) -> tuple[str | None, float | None, float | None, float | None]:
        """The SLA as the models table keeps it, a window or objective left out at its default
        (so an SLA written with and without the defaults is the same SLA)."""
        if self.sla_metric is None:
            return (None, None, None, None)
        return (
            self.sla_metric,
            self.sla_target_ms,
            DEFAULT_SLO_WINDOW_S if self.sla_window_s is None else self.sla_window_s,
            DEFAULT_SLO_OBJECTIVE if self.sla_objective is None else self.sla_objective,
        )


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
        if mrow is None:
            mrow = Model(name=m.name)
            session.add(mrow)
        mrow.server_id, mrow.role, mrow.device = server_ids[m.server], m.role, m.device
        # The newest decision wins: the spec's SLA when it is new or changed since the store last
        # saw it, else the one in force (a person's change through the API survives a restart).
        spec_sla = m.sla_columns
        seen = (
            mrow.spec_sla_metric,
            mrow.spec_sla_target_ms,
            mrow.spec_sla_window_s,
            mrow.spec_sla_objective,
        )
        if spec_sla != seen:
            mrow.sla_metric, mrow.sla_target_ms, mrow.sla_window_s, mrow.sla_objective = spec_sla
            (mrow.spec_sla_metric, mrow.spec_sla_target_ms, mrow.spec_sla_window_s,
             mrow.spec_sla_objective) = spec_sla  # fmt: skip
        session.flush()
        ids[m.name] = mrow.id
    return ids


def model_ids(session: Session) -> dict[str, int]:
    return {name: id_ for name, id_ in session.execute(select(Model.name, Model.id))}


def server_ids(session: Session) -> dict[str, int]:
    return {name: id_ for name, id_ in session.execute(select(Server.name, Server.id))}


def models(session: Session, names: Iterable[str]) -> dict[str, Model]:
    """The named models' rows by name (those the store has)."""
    return {m.name: m for m in session.scalars(select(Model).where(Model.name.in_(list(names))))}


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
    """Store the collector's windows, each tagged with the configuration version it belongs to."""
    rows = []
    for w in windows:
        if w.model not in ids:
            continue
        version_id, spans = version_of_window(versions.get(w.model), w.start, w.end)
        rows.append(_row(w, ids[w.model], version_id, spans, resolution_s))
    if rows:  # one multi-row INSERT: ORM objects cost more than the database here
        session.execute(insert(MetricWindow), rows)
    return len(rows)


def _row(
    w: ModelWindow, model_id: int, version_id: int | None, spans: bool, resolution_s: float
) -> dict[str, Any]:
    row = {f: getattr(w, f) for f in _WINDOW_FIELDS}
    row["latency_buckets"] = buckets_to_json(w.latency_buckets)
    row["ttft_buckets"] = buckets_to_json(w.ttft_buckets)
    row.update(
        model_id=model_id,
        config_version_id=version_id,
        spans_reconfiguration=spans,
        resolution_s=resolution_s,
    )
    return row


def buckets_to_json(buckets: Mapping[float, float]) -> dict[str, float]:
    """JSON keys are strings; +Inf is "inf"."""
    return {("inf" if math.isinf(le) else repr(le)): count for le, count in buckets.items()}


def buckets_from_json(buckets: Mapping[str, float] | None) -> dict[float, float]:
    return {float(le): count for le, count in (buckets or {}).items()}


def as_window(model: str, r: MetricWindow) -> ModelWindow:
    """A stored window as the domain's record."""
    return ModelWindow(
        model=model,
        **{f: getattr(r, f) for f in _WINDOW_FIELDS},
        latency_buckets=buckets_from_json(r.latency_buckets),
        ttft_buckets=buckets_from_json(r.ttft_buckets),
        config_version=r.config_version_id,
        spans_reconfiguration=r.spans_reconfiguration,
    )


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


def window_rows(session: Session, model: str, columns: Iterable[str], start: float, end: float) -> list[Any]:
    """A model's windows that ended in [start, end], oldest first, as rows of `columns` only (say
    `domain.slo.SLO_FIELDS`): cheaper to load than whole ORM objects."""
    q = (
        select(*(getattr(MetricWindow, c) for c in columns))
        .join(Model, Model.id == MetricWindow.model_id)
        .where(Model.name == model, MetricWindow.end >= start, MetricWindow.end <= end)
        .order_by(MetricWindow.end)
    )
    return list(session.execute(q).all())


def recent_windows(
    session: Session, since: float, fields: Sequence[str] = AGGREGATE_FIELDS
) -> dict[str, list[Any]]:
    """Every model's windows that ended at or after `since`, oldest first, as rows of `fields` (by
    default the columns `domain.windows.aggregate` reads; not whole ORM objects: several times
    cheaper to load)."""
    q = (
        select(Model.name, *(getattr(MetricWindow, c) for c in fields))
        .join(Model, Model.id == MetricWindow.model_id)
        .where(MetricWindow.end >= since)
        .order_by(MetricWindow.end)
    )
    out: dict[str, list[Any]] = {}
    for row in session.execute(q):
        out.setdefault(row.name, []).append(row)
    return out


class RecentWindows:
    """Every model's windows that ended at or after a moving `since`, kept between reads for a
    reader that asks every second (the controller): each `read` lists which windows are there
    (ids only, cheap) and loads only those it has not seen, their buckets decoded once to float
    bounds. Windows never change once written; the few a downsampling replaces drop out of the
    listing, and the windows that replace them come in like any new one. Not thread-safe: one
    reader owns one."""

    def __init__(self, fields: Sequence[str] = AGGREGATE_FIELDS) -> None:
        self.fields = list(fields)
        self._row: Any = namedtuple("StoredWindow", ["id", *self.fields])  # type: ignore[misc]
        self._kept: dict[int, Any] = {}

    def read(self, session: Session, since: float) -> dict[str, list[Any]]:
        """As `recent_windows(session, since, fields)`, from what is kept plus what is new."""
        listing = session.execute(
            select(MetricWindow.id, Model.name)
            .join(Model, Model.id == MetricWindow.model_id)
            .where(MetricWindow.end >= since)
            .order_by(MetricWindow.end, MetricWindow.id)
        ).all()
        new = [id_ for id_, _ in listing if id_ not in self._kept]
        kept = {id_: self._kept[id_] for id_, _ in listing if id_ in self._kept}
        for chunk in range(0, len(new), 500):  # bounded IN lists: the first read may load thousands
            for row in session.execute(
                select(MetricWindow.id, *(getattr(MetricWindow, c) for c in self.fields)).where(
                    MetricWindow.id.in_(new[chunk : chunk + 500])
                )
            ):
                kept[row.id] = self._row(**_decoded(row._mapping))
        self._kept = kept
        out: dict[str, list[Any]] = {}
        for id_, name in listing:
            # A window gone between the two statements (a downsampling) is no more: skip it.
            if id_ in kept:
                out.setdefault(name, []).append(kept[id_])
        return out


def _decoded(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A loaded row's columns, its JSON bucket bounds as floats, so summing them never parses again."""
    out = dict(row)
    for key in ("latency_buckets", "ttft_buckets"):
        if out.get(key):
            out[key] = {float(le): count for le, count in out[key].items()}
    return out


def downsample(session: Session, older_than: float, bucket_s: float = 60.0) -> int:
    """Replace raw windows that ended before `older_than` by one window per model, configuration
    version and `bucket_s` bucket (`domain.windows.downsample`). Returns the raw windows removed."""
    raw = session.execute(
        select(Model.name, MetricWindow)
        .join(Model, Model.id == MetricWindow.model_id)
        .where(MetricWindow.end < older_than, MetricWindow.resolution_s < bucket_s)
        .order_by(MetricWindow.model_id, MetricWindow.end)
    ).all()
    ids = {name: r.model_id for name, r in raw}
    rows = [
        _row(w, ids[w.model], w.config_version, w.spans_reconfiguration, bucket_s)
        for w in window_maths.downsample((as_window(name, r) for name, r in raw), bucket_s)
    ]
    if rows:
        session.execute(insert(MetricWindow), rows)
        session.execute(delete(MetricWindow).where(MetricWindow.id.in_([r.id for _, r in raw])))
    return len(raw)


def window_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(MetricWindow)) or 0)


DIAGNOSIS_FIELDS = (
    "start end requests success inference_rate avg_batch avg_queue_ms avg_compute_input_ms "
    "avg_compute_infer_ms avg_compute_output_ms p99_ms pending avg_request_ms"
).split()
"""What `domain.diagnosis` reads of a window."""


def diagnosis_windows(session: Session, since: float) -> dict[str, list[Any]]:
    """Every model's windows that ended at or after `since`, oldest first, as rows of
    DIAGNOSIS_FIELDS."""
    return recent_windows(session, since, DIAGNOSIS_FIELDS)


def server_utilization(session: Session, since: float) -> dict[str, float]:
    """Per server, the mean utilization of the devices it reported since `since` (0..1)."""
    q = (
        select(Server.name, func.avg(DeviceWindowRow.utilization))
        .join(Server, Server.id == DeviceWindowRow.server_id)
        .where(DeviceWindowRow.end >= since, DeviceWindowRow.utilization.is_not(None))
        .group_by(Server.name)
    )
    return {name: float(u) for name, u in session.execute(q) if u is not None}
