"""Tuning runs as the store records them (the run itself writes them: `tuner.live.run_study`). Each
function takes a session and never commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import TuningRun


def run(session: Session, run_id: int) -> TuningRun | None:
    return session.get(TuningRun, run_id)


def runs(session: Session) -> Sequence[TuningRun]:
    """Every tuning run, newest first."""
    return session.scalars(select(TuningRun).order_by(TuningRun.id.desc())).all()


def study_exists(session: Session, study_name: str) -> bool:
    """Whether a run already recorded a study of this name."""
    return session.scalar(select(TuningRun.id).where(TuningRun.study_name == study_name).limit(1)) is not None
