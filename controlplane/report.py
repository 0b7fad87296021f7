"""`slatune report OUT.png`: what happened to the fleet, as one figure a person can look at without
Grafana. Everything in it comes from the store (and, for a tuning run's trials, from the run's
Optuna study, which the store names):

1. each model with an SLA: its p99 (time to first token for a ttft_p99 SLA) per window against the
   target, with the reconfigurations applied to it and the controller's actions marked;
2. bulk goodput: each bulk model's items per second per window;
3. knobs over time: each model's instances and batching window, from its applied versions;
4. the tuning run's trials: goodput (the objective) by trial, feasible or not.

`gather` reads (one session, no drawing), `render` draws (matplotlib, no store): a test can check
that what is drawn is exactly what is stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import control, queries, tuning
from store.models import ConfigVersion, Model, TuningRun

KNOBS = ("instances", "max_queue_delay_us")
"""The knobs drawn over time: the two the tuner and the controller move most."""


@dataclass(frozen=True)
class Series:
    """One line: values (None: the window had none) at window ends, Unix seconds."""

    t: tuple[float, ...]
    y: tuple[float | None, ...]


@dataclass(frozen=True)
class Mark:
    """A moment to mark: a reconfiguration applied, or a controller action."""

    at: float
    model: str | None
    what: str


@dataclass(frozen=True)
class Trial:
    number: int
    state: str
    goodput: float | None
    """Bulk items per second the trial's window packed (the objective), None if never scored."""
    violations: float | None
    """Its SLA violations summed over the models (0: feasible)."""


@dataclass(frozen=True)
class ReportData:
    since: float
    until: float
    latency: dict[str, Series] = field(default_factory=dict)
    """Per model with an SLA: the p99 its SLA reads, per window."""
    sla: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Per model with an SLA: (metric, target ms)."""
    goodput: dict[str, Series] = field(default_factory=dict)
    """Per bulk model: items per second, per window."""
    knobs: dict[str, dict[str, Series]] = field(default_factory=dict)
    """Per model, per knob of KNOBS: its value from each applied version on (a step function)."""
    reconfigurations: list[Mark] = field(default_factory=list)
    actions: list[Mark] = field(default_factory=list)
    run_id: int | None = None
    run_span: tuple[float, float] | None = None
    """When the tuning run measured (shaded): its start and end (None while it runs)."""
    trials: list[Trial] = field(default_factory=list)


def optuna_trials(run: TuningRun) -> list[Any]:
    """A run's trials from its Optuna study ([] before the study exists)."""
    import optuna

    try:
        return list(optuna.load_study(study_name=run.study_name, storage=run.optuna_storage).trials)
    except KeyError:
        return []


def gather(
    session: Session,
    since: float,
    until: float,
    run_id: int | None = None,
    trials_of: Callable[[TuningRun], Sequence[Any]] = optuna_trials,
) -> ReportData:
    """Everything the figure shows over [since, until], from the store. `run_id`: the tuning run
    whose trials to show (default: the newest that started before `until`)."""
    data = ReportData(since, until)
    models = list(session.scalars(select(Model).order_by(Model.name)))
    for m in models:
        if m.sla_metric is not None and m.sla_target_ms is not None:
            column = "ttft_p99_ms" if m.sla_metric == "ttft_p99" else "p99_ms"
            rows = queries.window_rows(session, m.name, ["end", column], since, until)
            data.latency[m.name] = Series(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
            data.sla[m.name] = (m.sla_metric, m.sla_target_ms)
        if m.role == "bulk":
            rows = queries.window_rows(session, m.name, ["end", "inference_rate"], since, until)
            data.goodput[m.name] = Series(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
    names = {m.id: m.name for m in models}
    versions = session.scalars(
        select(ConfigVersion)
        .where(ConfigVersion.applied_at.is_not(None), ConfigVersion.applied_at <= until)
        .order_by(ConfigVersion.applied_at, ConfigVersion.id)
    ).all()
    steps: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for v in versions:
        at, model = float(v.applied_at or 0.0), names[v.model_id]
        history = steps.setdefault(model, [])
        if at < since:  # the version in force when the report begins starts its line
            history[:] = [(since, v.knobs)]
            continue
        history.append((at, v.knobs))
        data.reconfigurations.append(Mark(at, model, v.actor))
    for model, history in steps.items():
        data.knobs[model] = {
            k: Series(tuple(t for t, _ in history), tuple(_number(knobs.get(k)) for _, knobs in history))
            for k in KNOBS
        }
    for a in reversed(control.actions(session, limit=10_000, since=since)):
        if a.at <= until:
            data.actions.append(Mark(a.at, a.model, a.kind + ("" if a.applied else f" ({a.mode})")))
    run = _run(session, run_id, until)
    if run is not None:
        data = _with_trials(data, run, trials_of(run))
    return data


def _run(session: Session, run_id: int | None, until: float) -> TuningRun | None:
    if run_id is not None:
        run = tuning.run(session, run_id)
        if run is None:
            raise ValueError(f"no tuning run {run_id} in the store")
        return run
    return next((r for r in tuning.runs(session) if r.started_at <= until), None)


def _with_trials(data: ReportData, run: TuningRun, trials: Sequence[Any]) -> ReportData:
    out = []
    for t in trials:
        score = t.user_attrs.get("score")
        goodput = violations = None
        if isinstance(score, dict):
            goodput = float(score["goodput"])
            violations = float(sum(score.get("violations", {}).values()))
        out.append(Trial(t.number, t.state.name, goodput, violations))
    span = (run.started_at, run.ended_at) if run.ended_at is not None else None
    return replace(data, run_id=run.id, run_span=span, trials=out)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def run_span(session: Session, run_id: int, margin_s: float = 60.0) -> tuple[float, float]:
    """A tuning run's time span with a margin either side (the run's end: now if it runs still)."""
    run = tuning.run(session, run_id)
    if run is None:
        raise ValueError(f"no tuning run {run_id} in the store")
    end = run.ended_at if run.ended_at is not None else datetime.now(UTC).timestamp()
    return run.started_at - margin_s, end + margin_s


def render(data: ReportData, out: Path) -> Path:
    """Draw `data` into the PNG `out` (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = data.since

    def rel(ts: Sequence[float]) -> list[float]:
        return [t - t0 for t in ts]

    def vals(ys: Sequence[float | None]) -> list[float]:
        return [math.nan if y is None else y for y in ys]

    fig, axes = plt.subplots(5, 1, figsize=(11, 15), constrained_layout=True)
    lat, good, inst, delay, trials = axes
    began = datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fig.suptitle(f"slatune report: {began} + {data.until - t0:.0f} s", fontsize=13)

    colors = {}
    for i, model in enumerate(sorted({*data.latency, *data.goodput, *data.knobs})):
        colors[model] = f"C{i % 10}"
    for model, s in data.latency.items():
        metric, target = data.sla[model]
        lat.plot(rel(s.t), vals(s.y), color=colors[model], lw=1.2, label=f"{model} {metric}")
        lat.axhline(target, color=colors[model], ls="--", lw=1, alpha=0.8)
        lat.annotate(f"SLA {target:g} ms", (0, target), color=colors[model], fontsize=8, va="bottom")
    for m in data.reconfigurations:
        lat.axvline(m.at - t0, color=colors.get(m.model or "", "grey"), ls=":", lw=0.8, alpha=0.7)
    ymax = lat.get_ylim()[1] if data.latency else 1.0
    for m in data.actions:
        lat.axvline(m.at - t0, color="black", lw=1.0, alpha=0.6)
        lat.annotate(m.what, (m.at - t0, ymax), rotation=90, fontsize=7, va="top", ha="right")
    if _spread(data.latency):
        lat.set_yscale("log")
    lat.set_title(
        "p99 against SLA (dashed); dotted: reconfigurations applied; black: controller actions; "
        "shaded: the tuning run"
    )
    lat.set_ylabel("ms")

    for model, s in data.goodput.items():
        good.plot(rel(s.t), vals(s.y), color=colors[model], lw=1.2, label=model)
    good.set_title("bulk goodput")
    good.set_ylabel("items / s")

    for model, knobs in data.knobs.items():
        s = knobs["instances"]
        inst.step(
            rel([*s.t, data.until]), vals([*s.y, s.y[-1]]), where="post", color=colors[model], label=model
        )
        s = knobs["max_queue_delay_us"]
        delay.step(
            rel([*s.t, data.until]),
            [v / 1000 for v in vals([*s.y, s.y[-1]])],
            where="post",
            color=colors[model],
            label=model,
        )
    if data.run_span is not None:
        for ax in (lat, good, inst, delay):
            ax.axvspan(data.run_span[0] - t0, data.run_span[1] - t0, color="grey", alpha=0.12, lw=0)
        good.annotate(f"tuning run {data.run_id}", (data.run_span[0] - t0, 0), fontsize=8, va="bottom")
    inst.set_title("instances (applied versions)")
    delay.set_title("batching window: max queue delay (applied versions)")
    delay.set_ylabel("ms")
    for ax in (lat, good, inst, delay):
        ax.set_xlim(0, max(data.until - t0, 1.0))
        ax.set_xlabel("seconds since the report's start")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", ncols=2)

    scored = [t for t in data.trials if t.goodput is not None]
    feasible = [t for t in scored if not t.violations]
    infeasible = [t for t in scored if t.violations]
    trials.scatter([t.number for t in feasible], [t.goodput for t in feasible], color="C2", label="feasible")
    trials.scatter(
        [t.number for t in infeasible],
        [t.goodput for t in infeasible],
        color="C3",
        marker="x",
        label="SLA broken",
    )
    trials.set_title(
        f"tuning run {data.run_id}: trials' bulk goodput (trial 0: the running configuration)"
        if data.run_id is not None
        else "no tuning run"
    )
    trials.set_xlabel("trial")
    trials.xaxis.get_major_locator().set_params(integer=True)
    trials.set_ylabel("items / s")
    trials.grid(alpha=0.3)
    if scored:
        trials.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _spread(latency: dict[str, Series]) -> bool:
    """Whether the latencies span more than two decades (then a log axis reads better)."""
    ys = [y for s in latency.values() for y in s.y if y is not None and y > 0]
    return bool(ys) and max(ys) / min(ys) > 100
