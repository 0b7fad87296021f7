"""Configuration versions and the reconfiguration journal: what was asked for, what became of it.

A version is born `desired` (by a person, the tuner, an alert policy), and ends `applied` or
`failed`; an applied version is later `superseded` by the next one. A desired version overtaken by
a newer desired version of the same model before it was applied is `superseded` too, with the
reason saying by which. Each function takes a session and never commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.proposal import Proposal
from domain.spec import Knobs
from store.models import ConfigVersion, JournalEntry, Model


class UnknownModel(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name


def model_row(session: Session, name: str) -> Model:
    row = session.scalar(select(Model).where(Model.name == name))
    if row is None:
        raise UnknownModel(name)
    return row


def propose(
    session: Session, model: str, knobs: Mapping[str, Any], actor: str, reason: str, at: float
) -> ConfigVersion:
    """A new desired version of `model`; older desired ones are overtaken by it."""
    model_id = model_row(session, model).id
    row = ConfigVersion(
        model_id=model_id, knobs=dict(knobs), actor=actor, reason=reason, state="desired", created_at=at
    )
    session.add(row)
    session.flush()
    for older in session.scalars(
        select(ConfigVersion).where(
            ConfigVersion.model_id == model_id, ConfigVersion.state == "desired", ConfigVersion.id < row.id
        )
    ):
        older.state = "superseded"
        older.error = f"overtaken by version {row.id} before it was applied"
    return row


def set_sla(session: Session, model: str, metric: str, target_ms: float) -> None:
    """A person's SLA for `model`: in force until they or the spec change it again."""
    row = model_row(session, model)
    row.sla_metric, row.sla_target_ms = metric, target_ms


def record(session: Session, proposal: Proposal, reason: str, at: float) -> dict[str, ConfigVersion]:
    """The desired versions of an accepted proposal's changes (none when nothing changes). Every
    writer of configurations records through here, with what `domain.proposal.propose` allowed."""
    if not proposal.accepted:
        raise ValueError(f"a refused proposal is not recorded: {proposal.refused}")
    return {
        model: propose(session, model, knobs.model_dump(), proposal.actor, reason, at)
        for model, knobs in sorted(proposal.changes.items())
    }


def pending_knobs(session: Session) -> dict[str, Knobs]:
    """The newest desired knobs of each model that has some (what it will run next)."""
    return {name: Knobs.model_validate(v.knobs) for name, v in desired(session).items()}


def desired(session: Session) -> dict[str, ConfigVersion]:
    """The newest desired version of each model that has one."""
    rows = session.execute(
        select(Model.name, ConfigVersion)
        .join(ConfigVersion, ConfigVersion.model_id == Model.id)
        .where(ConfigVersion.state == "desired")
        .order_by(ConfigVersion.id)
    )
    return {name: version for name, version in rows}  # the newest wins


def applied(session: Session) -> dict[str, ConfigVersion]:
    """Each model's version in force."""
    rows = session.execute(
        select(Model.name, ConfigVersion)
        .join(ConfigVersion, ConfigVersion.model_id == Model.id)
        .where(ConfigVersion.state == "applied")
    )
    return {name: version for name, version in rows}


def mark_applied(session: Session, version: ConfigVersion, at: float) -> None:
    """`version` runs now; the one it replaces is superseded."""
    for old in session.scalars(
        select(ConfigVersion).where(
            ConfigVersion.model_id == version.model_id,
            ConfigVersion.state == "applied",
            ConfigVersion.id != version.id,
        )
    ):
        old.state = "superseded"
    version.state, version.applied_at, version.error = "applied", at, None


def mark_failed(session: Session, version: ConfigVersion, error: str) -> None:
    version.state, version.error = "failed", error


def history(session: Session, model: str, limit: int = 50) -> Sequence[ConfigVersion]:
    """A model's versions, newest first."""
    model_id = model_row(session, model).id
    return session.scalars(
        select(ConfigVersion)
        .where(ConfigVersion.model_id == model_id)
        .order_by(ConfigVersion.id.desc())
        .limit(limit)
    ).all()


def version(session: Session, model: str, version_id: int) -> ConfigVersion | None:
    row = session.get(ConfigVersion, version_id)
    if row is None or row.model_id != model_row(session, model).id:
        return None
    return row


def open_entry(session: Session, version: ConfigVersion, at: float) -> JournalEntry:
    entry = JournalEntry(config_version_id=version.id, model_id=version.model_id, started_at=at)
    session.add(entry)
    session.flush()
    return entry


def close_entry(
    session: Session,
    entry_id: int,
    outcome: str,
    at: float,
    path: str | None = None,
    error: str | None = None,
) -> None:
    entry = session.get(JournalEntry, entry_id)
    assert entry is not None, f"journal entry {entry_id} vanished"
    entry.outcome, entry.finished_at, entry.path, entry.error = outcome, at, path, error


def open_entries(session: Session) -> list[tuple[str, JournalEntry, ConfigVersion]]:
    """Applies that started and never finished (the control plane stopped in between)."""
    rows = session.execute(
        select(Model.name, JournalEntry, ConfigVersion)
        .join(ConfigVersion, ConfigVersion.id == JournalEntry.config_version_id)
        .join(Model, Model.id == JournalEntry.model_id)
        .where(JournalEntry.finished_at.is_(None))
        .order_by(JournalEntry.id)
    )
    return [(name, entry, version) for name, entry, version in rows]


def journal(session: Session, version_id: int) -> Sequence[JournalEntry]:
    return session.scalars(
        select(JournalEntry).where(JournalEntry.config_version_id == version_id).order_by(JournalEntry.id)
    ).all()
