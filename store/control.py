"""The SLO controller's records: its journal of actions, the incumbent per traffic regime, and the
neighbours it tried (`domain.control` decides; `controlplane.controller` calls these)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.control import Known, Trial
from domain.spec import Knobs
from store.models import ControllerAction, ControllerTrial, MetricWindow, Model, RegimeConfig


def knobs_json(knobs: Mapping[str, Knobs]) -> dict[str, Any]:
    return {name: k.model_dump(mode="json") for name, k in sorted(knobs.items())}


def knobs_of(data: Mapping[str, Any]) -> dict[str, Knobs]:
    return {name: Knobs.model_validate(k) for name, k in data.items()}


def add_action(session: Session, **fields: Any) -> ControllerAction:
    action = ControllerAction(**fields)
    session.add(action)
    session.flush()
    return action


def set_effect(session: Session, action_id: int, after_ratio: float) -> None:
    action = session.get(ControllerAction, action_id)
    if action is not None:
        action.after_ratio = after_ratio


def actions(session: Session, limit: int = 20, since: float | None = None) -> Sequence[ControllerAction]:
    """The newest actions first."""
    q = select(ControllerAction).order_by(ControllerAction.at.desc(), ControllerAction.id.desc())
    if since is not None:
        q = q.where(ControllerAction.at >= since)
    return session.scalars(q.limit(limit)).all()


def rung_effects(session: Session, min_count: int = 2) -> dict[str, float]:
    """Per protective rung applied for real, the mean of the worst latency-critical SLA figure a few
    seconds after it over the figure when it was taken (lower is better), where it was measured at
    least `min_count` times."""
    rows = session.execute(
        select(ControllerAction.rung, ControllerAction.before_ratio, ControllerAction.after_ratio).where(
            ControllerAction.kind == "protect",
            ControllerAction.applied.is_(True),
            ControllerAction.before_ratio > 0,
            ControllerAction.after_ratio.is_not(None),
        )
    ).all()
    ratios: dict[str, list[float]] = {}
    for rung, before, after in rows:
        if rung is not None and before is not None and after is not None:
            ratios.setdefault(rung, []).append(min(after / before, 10.0))
    return {rung: sum(v) / len(v) for rung, v in ratios.items() if len(v) >= min_count}


def known(session: Session) -> dict[str, Known]:
    return {r.regime: Known(knobs_of(r.knobs), r.goodput) for r in session.scalars(select(RegimeConfig))}


def keep(
    session: Session, regime: str, knobs: Mapping[str, Knobs], goodput: float, source: str, at: float
) -> None:
    row = session.get(RegimeConfig, regime)
    if row is None:
        session.add(
            RegimeConfig(
                regime=regime, knobs=knobs_json(knobs), goodput=goodput, source=source, updated_at=at
            )
        )
    else:
        row.knobs, row.goodput, row.source, row.updated_at = knobs_json(knobs), goodput, source, at


def add_trial(
    session: Session,
    regime: str,
    what: str,
    knobs: Mapping[str, Knobs],
    safe: bool,
    goodput: float,
    at: float,
) -> None:
    session.add(
        ControllerTrial(regime=regime, what=what, knobs=knobs_json(knobs), safe=safe, goodput=goodput, at=at)
    )


def trials(session: Session, regime: str | None, limit: int = 200, *, elsewhere: bool = False) -> list[Trial]:
    """The regime's tried neighbours, oldest first (the newest `limit`); with `elsewhere`, those
    tried in every other regime instead (every regime's, with none)."""
    q = select(ControllerTrial)
    if not elsewhere:
        q = q.where(ControllerTrial.regime == regime)
    elif regime is not None:
        q = q.where(ControllerTrial.regime != regime)
    rows = session.scalars(q.order_by(ControllerTrial.at.desc()).limit(limit)).all()
    return [Trial(knobs_of(r.knobs), r.safe, r.goodput, r.what) for r in reversed(rows)]


def latest_pending(session: Session, since: float) -> dict[str, float]:
    """Each model's requests waiting in Triton's queue at its newest window since `since`."""
    q = (
        select(Model.name, MetricWindow.pending)
        .join(Model, Model.id == MetricWindow.model_id)
        .where(MetricWindow.end >= since)
        .order_by(MetricWindow.end)
    )
    return {name: pending or 0.0 for name, pending in session.execute(q)}
