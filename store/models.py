"""The store's tables: one module, SQLAlchemy 2 declarative, migrated by alembic/.

Times are Unix seconds (float) in UTC: windows are compared and bucketed arithmetically, and the
same value means the same instant on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Who asked for a configuration.
ACTORS = ("tuner", "alert", "person", "startup")
# A configuration version's life: desired -> applied | failed; an applied one later superseded.
CONFIG_STATES = ("desired", "applied", "failed", "superseded")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        dict[str, float]: JSON,
        list[str]: JSON,
    }


class Server(Base):
    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    grpc_url: Mapped[str] = mapped_column(String(256))
    metrics_url: Mapped[str] = mapped_column(String(256))
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    """Started by slatune (True) or attached to by URL (False)."""

    models: Mapped[list[Model]] = relationship(back_populates="server")


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"))
    role: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(128))
    sla_metric: Mapped[str | None] = mapped_column(String(32))
    sla_target_ms: Mapped[float | None] = mapped_column(Float)
    """The SLA in force: the spec's, or one a person set since through the API."""
    sla_window_s: Mapped[float | None] = mapped_column(Float)
    sla_objective: Mapped[float | None] = mapped_column(Float)
    """The SLA's rolling window and objective (`domain.spec.Sla`); None: the defaults."""
    spec_sla_metric: Mapped[str | None] = mapped_column(String(32))
    spec_sla_target_ms: Mapped[float | None] = mapped_column(Float)
    spec_sla_window_s: Mapped[float | None] = mapped_column(Float)
    spec_sla_objective: Mapped[float | None] = mapped_column(Float)
    """The spec's SLA when the store last saw it: a spec that changes it again wins over a person's."""

    server: Mapped[Server] = relationship(back_populates="models")


class ConfigVersion(Base):
    """A configuration of one model someone asked for, and what became of it."""

    __tablename__ = "config_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    knobs: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="desired")
    created_at: Mapped[float] = mapped_column(Float)
    applied_at: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class JournalEntry(Base):
    """The reconfiguration journal: written before an apply starts, closed when it ends. An entry
    still open at start-up is an apply that was interrupted."""

    __tablename__ = "reconfiguration_journal"

    id: Mapped[int] = mapped_column(primary_key=True)
    config_version_id: Mapped[int] = mapped_column(ForeignKey("config_versions.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String(16))
    """applied, unchanged, failed; None while open."""
    path: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class MetricWindow(Base):
    """One model over one window: what the tuner decides from."""

    __tablename__ = "metric_windows"
    __table_args__ = (Index(None, "model_id", "end"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    resolution_s: Mapped[float] = mapped_column(Float, default=1.0)
    """The scrape interval for raw windows; larger for downsampled ones."""
    config_version_id: Mapped[int | None] = mapped_column(ForeignKey("config_versions.id"), index=True)
    spans_reconfiguration: Mapped[bool] = mapped_column(Boolean, default=False)
    """A configuration was applied inside this window: it belongs to no single version."""
    reset: Mapped[bool] = mapped_column(Boolean, default=False)
    requests: Mapped[float] = mapped_column(Float)
    success: Mapped[float] = mapped_column(Float)
    failures: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    request_rate: Mapped[float] = mapped_column(Float)
    inference_rate: Mapped[float] = mapped_column(Float)
    avg_batch: Mapped[float | None] = mapped_column(Float)
    avg_request_ms: Mapped[float | None] = mapped_column(Float)
    avg_queue_ms: Mapped[float | None] = mapped_column(Float)
    avg_compute_input_ms: Mapped[float | None] = mapped_column(Float)
    avg_compute_infer_ms: Mapped[float | None] = mapped_column(Float)
    avg_compute_output_ms: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    latency_source: Mapped[str | None] = mapped_column(String(16))
    """Where p50/p90/p99 come from: "client"/"model" histograms, or Triton's "summary"."""
    latency_buckets: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    """The window's latency histogram, cumulative counts by upper bound in ms ("inf" for +Inf):
    quantiles over many windows are exact from their summed buckets."""
    ttft_buckets: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    ttft_p50_ms: Mapped[float | None] = mapped_column(Float)
    ttft_p99_ms: Mapped[float | None] = mapped_column(Float)
    ttft_source: Mapped[str | None] = mapped_column(String(16))
    pending: Mapped[float] = mapped_column(Float, default=0.0)


class DeviceWindowRow(Base):
    __tablename__ = "device_windows"
    __table_args__ = (Index(None, "device", "end"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"))
    device: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(8))
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    resolution_s: Mapped[float] = mapped_column(Float, default=1.0)
    utilization: Mapped[float | None] = mapped_column(Float)
    memory_used_bytes: Mapped[float | None] = mapped_column(Float)
    memory_total_bytes: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    processes: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class AlertReceived(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[float] = mapped_column(Float, index=True)
    status: Mapped[str] = mapped_column(String(16))
    alertname: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    starts_at: Mapped[str | None] = mapped_column(String(64))
    ends_at: Mapped[str | None] = mapped_column(String(64))
    handled: Mapped[bool] = mapped_column(Boolean, default=False)


class TuningRun(Base):
    """A tuning run and the Optuna study that holds its trials (in Optuna's own storage)."""

    __tablename__ = "tuning_runs"
    __table_args__ = (UniqueConstraint("study_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(128))
    optuna_storage: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="running")
    """running, completed, stopped, failed; interrupted (its process died), discarded (by a person)."""
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    budget: Mapped[int] = mapped_column(Integer)
    window_s: Mapped[float] = mapped_column(Float)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The best feasible configuration and its evidence (windows, scores)."""
    warmup_s: Mapped[float | None] = mapped_column(Float)
    """Seconds after each apply that are not measured (a resumed run keeps them)."""
    owner: Mapped[str | None] = mapped_column(String(256))
    """The process running it, as host/pid/process start time (`controlplane.tuning.Owner`): at
    start-up a `running` run whose owner died is `interrupted`, one another live process owns is
    left alone."""
    owned_since: Mapped[float | None] = mapped_column(Float)
    """When its owner started (or resumed) it: the tuner's versions since then are this stint's."""
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    """The owner's last sign of life, renewed while it runs: the lease a process on another host
    is judged by."""


class ControllerAction(Base):
    """The SLO controller's journal: every decision that changed, or would have changed, the fleet,
    with its reason and evidence (`domain.control.decide`)."""

    __tablename__ = "controller_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    mode: Mapped[str] = mapped_column(String(16))
    """on (applied through the proposal path) or advisory (recorded only)."""
    kind: Mapped[str] = mapped_column(String(16))
    """protect, panic, release, floor, regime, explore, abandon, adopt, reject."""
    model: Mapped[str | None] = mapped_column(String(128))
    """The latency-critical model the action is about, if any."""
    rung: Mapped[str | None] = mapped_column(String(32))
    regime: Mapped[str | None] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    window_start: Mapped[float | None] = mapped_column(Float)
    window_end: Mapped[float | None] = mapped_column(Float)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The knobs asked for, by model (only the models that change)."""
    applied: Mapped[bool] = mapped_column(Boolean, default=False)
    refused: Mapped[str | None] = mapped_column(Text)
    """Why the proposal path refused it, if it did."""
    before_ratio: Mapped[float | None] = mapped_column(Float)
    """The worst latency-critical SLA figure over its target when the action was taken..."""
    after_ratio: Mapped[float | None] = mapped_column(Float)
    """...and a few seconds later: what the action did (orders the protective ladder)."""


class RegimeConfig(Base):
    """The best configuration known safe for a traffic regime (`domain.control.regime_key`)."""

    __tablename__ = "regime_configs"

    regime: Mapped[str] = mapped_column(String(512), primary_key=True)
    knobs: Mapped[dict[str, Any]] = mapped_column(JSON)
    goodput: Mapped[float] = mapped_column(Float)
    """Bulk items per second it packed when it was measured."""
    source: Mapped[str] = mapped_column(String(16))
    """adopt (a neighbour that packed more), floor (the protection a release proved needed)."""
    updated_at: Mapped[float] = mapped_column(Float)


class ControllerTrial(Base):
    """A neighbour the controller tried in a regime, and how it went: the history that ranks the
    next neighbours."""

    __tablename__ = "controller_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    regime: Mapped[str] = mapped_column(String(512), index=True)
    at: Mapped[float] = mapped_column(Float)
    what: Mapped[str] = mapped_column(String(256))
    knobs: Mapped[dict[str, Any]] = mapped_column(JSON)
    safe: Mapped[bool] = mapped_column(Boolean)
    goodput: Mapped[float] = mapped_column(Float)


class ColocationRule(Base):
    """Two models measured unable to share a device while an SLA held, or told so by a person: the
    packing planner keeps them apart (`packing.planner.LearnedRule`)."""

    __tablename__ = "colocation_rules"
    __table_args__ = (UniqueConstraint("model_a", "model_b"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_a: Mapped[str] = mapped_column(String(128))
    """The pair in name order, so that one pair is one row."""
    model_b: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    """controller (measured live), tuner (a study that found no safe configuration), person."""
    summary: Mapped[str] = mapped_column(Text)
    """The evidence in a sentence: what was measured, where, and what had been tried."""
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The figures behind it (SLA, attainment, window, the protection in force)."""
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
