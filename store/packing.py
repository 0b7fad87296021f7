"""Co-location rules learned live: pairs of models that could not share a device while an SLA held.
The SLO controller records them; `slatune plan` and the API read them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from packing.planner import LearnedRule
from store.models import ColocationRule

SOURCES = ("controller", "tuner", "person")


def record_cannot_share(
    session: Session, a: str, b: str, *, source: str, summary: str, evidence: dict[str, Any], now: float
) -> ColocationRule:
    """Record (or refresh, with the newest evidence) that `a` and `b` cannot share a device."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    if a == b:
        raise ValueError(f"a model cannot be kept apart from itself ({a!r})")
    first, second = sorted((a, b))
    row = session.scalar(
        select(ColocationRule).where(ColocationRule.model_a == first, ColocationRule.model_b == second)
    )
    if row is None:
        row = ColocationRule(model_a=first, model_b=second, created_at=now)
        session.add(row)
    row.source, row.summary, row.evidence, row.updated_at = source, summary, evidence, now
    session.flush()
    return row


def rules(session: Session) -> Sequence[ColocationRule]:
    return session.scalars(
        select(ColocationRule).order_by(ColocationRule.model_a, ColocationRule.model_b)
    ).all()


def forget(session: Session, rule_id: int) -> bool:
    """Drop a rule (a person decided the pair may share again); False when there was none."""
    row = session.get(ColocationRule, rule_id)
    if row is None:
        return False
    session.delete(row)
    return True


def learned_rules(session: Session) -> list[LearnedRule]:
    return [LearnedRule(r.model_a, r.model_b, r.summary) for r in rules(session)]
