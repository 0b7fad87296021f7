"""Tuning runs as the store records them (the run itself writes them: `tuner.live.run_study`). Each
function takes a session and never commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import ConfigVersion, Model, TuningRun

RESUMABLE = ("interrupted", "stopped")
"""What a person may resume or discard: a run that no process runs and that did not finish."""


def run(session: Session, run_id: int) -> TuningRun | None:
    return session.get(TuningRun, run_id)


def runs(session: Session) -> Sequence[TuningRun]:
    """Every tuning run, newest first."""
    return session.scalars(select(TuningRun).order_by(TuningRun.id.desc())).all()


def study_exists(session: Session, study_name: str) -> bool:
    """Whether a run already recorded a study of this name."""
    return session.scalar(select(TuningRun.id).where(TuningRun.study_name == study_name).limit(1)) is not None


def running(session: Session) -> Sequence[TuningRun]:
    """Runs the store says are running (some may belong to a process that died)."""
    return session.scalars(
        select(TuningRun).where(TuningRun.status == "running").order_by(TuningRun.id)
    ).all()


def claim(session: Session, run_id: int, owner: str, at: float) -> bool:
    """Make a resumable run `running` again under `owner`; False (nothing changed) when it is not
    resumable. One statement, so two processes resuming the same run cannot both win."""
    done = session.execute(
        update(TuningRun)
        .where(TuningRun.id == run_id, TuningRun.status.in_(RESUMABLE))
        .values(status="running", owner=owner, owned_since=at, heartbeat_at=at, ended_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(done, "rowcount", 0))


def beat(session: Session, run_id: int, owner: str, at: float) -> bool:
    """Renew the owner's lease on its running run; False when the run is no longer its own."""
    done = session.execute(
        update(TuningRun)
        .where(TuningRun.id == run_id, TuningRun.owner == owner, TuningRun.status == "running")
        .values(heartbeat_at=at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(done, "rowcount", 0))


def discard(session: Session, run_id: int, at: float) -> bool:
    """Mark a resumable run `discarded` (its study stays for the record); False when it is not
    resumable."""
    done = session.execute(
        update(TuningRun)
        .where(TuningRun.id == run_id, TuningRun.status.in_(RESUMABLE))
        .values(status="discarded", ended_at=at)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(done, "rowcount", 0))


def _since(run: TuningRun) -> float:
    """When the run's owner last started it."""
    return run.owned_since if run.owned_since is not None else run.started_at


def _stint(run: TuningRun) -> Any:
    """The tuner's versions written since the run's owner last started it."""
    return (ConfigVersion.actor == "tuner") & (ConfigVersion.created_at >= _since(run))


def desired_of(session: Session, run: TuningRun) -> Sequence[tuple[str, ConfigVersion]]:
    """The run's own configuration versions still waiting to be applied."""
    rows = session.execute(
        select(Model.name, ConfigVersion)
        .join(Model, Model.id == ConfigVersion.model_id)
        .where(ConfigVersion.state == "desired", _stint(run))
        .order_by(ConfigVersion.id)
    )
    return [(name, version) for name, version in rows]


def applied_before(session: Session, run: TuningRun) -> dict[str, dict[str, Any]]:
    """Each model's newest applied knobs (in force now or superseded since) not written by the
    run's own trials: what it ran before the run, or what a person or an alert set during it. A
    `startup` version recorded since the run began is not one: it records what a restarted fleet
    found running, which may be the dead run's unmeasured trial (an attached Triton keeps it)."""
    after_start = (ConfigVersion.actor == "startup") & (ConfigVersion.created_at >= _since(run))
    rows = session.execute(
        select(Model.name, ConfigVersion)
        .join(Model, Model.id == ConfigVersion.model_id)
        .where(ConfigVersion.applied_at.is_not(None), ~_stint(run), ~after_start)
        .order_by(ConfigVersion.applied_at, ConfigVersion.id)
    )
    return {name: dict(version.knobs) for name, version in rows}  # the newest wins
