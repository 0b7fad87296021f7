"""Alerts received by the webhook, and the configuration a firing alert falls back to. Each
function takes a session and never commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import AlertReceived, TuningRun


def _fits(value: str | None, length: int) -> str | None:
    """As its column holds it (an alert is recorded, not refused, for an odd label): at most
    `length` characters and no NUL, which PostgreSQL refuses."""
    return None if value is None else value.replace("\x00", "")[:length]


def record(
    session: Session,
    at: float,
    status: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    fingerprint: str | None,
    starts_at: str | None,
    ends_at: str | None,
) -> AlertReceived:
    row = AlertReceived(
        received_at=at, status=status, alertname=_fits(labels.get("alertname", "unnamed"), 128),
        fingerprint=_fits(fingerprint, 64), model=_fits(labels.get("model"), 128), labels=dict(labels),
        annotations=dict(annotations), starts_at=_fits(starts_at, 64), ends_at=_fits(ends_at, 64), handled=False,
    )  # fmt: skip
    session.add(row)
    return row


def received(session: Session, limit: int) -> Sequence[AlertReceived]:
    """Alerts received, newest first."""
    return session.scalars(select(AlertReceived).order_by(AlertReceived.id.desc()).limit(limit)).all()


def newest_best(session: Session) -> tuple[int, dict[str, Any]] | None:
    """The newest tuning run that found a best configuration: its id and knobs per model."""
    for run in session.scalars(select(TuningRun).order_by(TuningRun.id.desc())):
        if run.best and run.best.get("knobs"):
            return run.id, dict(run.best["knobs"])
    return None
