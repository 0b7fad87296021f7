"""Configuration versions and the reconfiguration journal: what was asked for, what became of it.

A version is born `desired` (by a person, the tuner, an alert policy), and ends `applied` or
`failed`; an applied version is later `superseded` by the next one. A desired version overtaken by
a newer version of the same model before it was applied is `superseded` too, with the reason
saying by which: only a model's newest version can be desired, on every store and however many
writers propose at once (see `propose`). Each function takes a session and never commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from domain.proposal import Proposal
from domain.spec import Knobs, Sla
from store.models import ConfigVersion, JournalEntry, Model


class UnknownModel(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name


def model_row(session: Session, name: str, *, lock: bool = False) -> Model:
    """`lock` holds the row until the transaction ends (SELECT ... FOR UPDATE; SQLite, which
    has no row locks, serialises writers with its database lock)."""
    query = select(Model).where(Model.name == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownModel(name)
    return row


def propose(
    session: Session, model: str, knobs: Mapping[str, Any], actor: str, reason: str, at: float
) -> ConfigVersion:
    """A new desired version of `model`; older desired ones are overtaken by it.

    The model's row is locked first, so concurrent proposals for one model take their ids and
    commit one after the other: each sees the ones before it (under PostgreSQL's READ COMMITTED,
    a plain SELECT missed the ones not yet committed, and they all stayed desired), and the
    newest id is the last decision."""
    model_id = model_row(session, model, lock=True).id
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


def set_sla(session: Session, model: str, sla: Sla) -> None:
    """A person's SLA for `model`: in force until they or the spec change it again."""
    row = model_row(session, model)
    row.sla_metric, row.sla_target_ms = sla.metric, sla.target_ms
    row.sla_window_s, row.sla_objective = sla.window_s, sla.objective


def record(session: Session, proposal: Proposal, reason: str, at: float) -> dict[str, ConfigVersion]:
    """The desired versions of an accepted proposal's changes (none when nothing changes). Every
    writer of configurations records through here, with what `domain.proposal.propose` allowed."""
    if not proposal.accepted:
        raise ValueError(f"a refused proposal is not recorded: {proposal.refused}")
    return {
        model: propose(session, model, knobs.model_dump(mode="json"), proposal.actor, reason, at)
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


def supersede_overtaken(session: Session) -> list[ConfigVersion]:
    """Mark superseded every desired version that is not its model's newest version, and return
    them. `propose` leaves none; this is the reader's own guard (rows written before the lock,
    or by a writer that bypassed it), so an older decision is never applied after a newer one."""
    newest = (
        select(ConfigVersion.model_id, func.max(ConfigVersion.id).label("newest_id"))
        .group_by(ConfigVersion.model_id)
        .subquery()
    )
    rows = session.execute(
        select(ConfigVersion, newest.c.newest_id)
        .join(newest, newest.c.model_id == ConfigVersion.model_id)
        .where(ConfigVersion.state == "desired", ConfigVersion.id < newest.c.newest_id)
        .order_by(ConfigVersion.id)
    ).all()
    for older, newest_id in rows:
        older.state = "superseded"
        older.error = f"overtaken by version {newest_id} before it was applied"
    return [older for older, _ in rows]


def mark_applied(session: Session, version: ConfigVersion, at: float) -> None:
    """`version` runs now; the one it replaces is superseded, and so is any older version still
    desired (an older decision must not be applied after it)."""
    for old in session.scalars(
        select(ConfigVersion).where(
            ConfigVersion.model_id == version.model_id,
            ConfigVersion.id != version.id,
            or_(
                ConfigVersion.state == "applied",
                (ConfigVersion.state == "desired") & (ConfigVersion.id < version.id),
            ),
        )
    ):
        if old.state == "desired":
            old.error = f"overtaken by version {version.id} before it was applied"
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
