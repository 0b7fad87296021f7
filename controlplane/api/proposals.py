"""A proposed configuration from a person (the API) or an alert: passed through the one proposal
path (`domain.proposal.propose`) with what runs and what is pending, and recorded as desired
versions for the reconciler. Nothing here talks to Triton."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from controlplane.api.deps import ApiError
from controlplane.api.schemas import ClipOut, MemoryOut, ProposalOut, VersionOut
from controlplane.plane import ControlPlane
from domain.proposal import Actor, Proposal, propose
from domain.spec import Knobs
from store import configs
from store.models import ConfigVersion


def version_out(model: str, v: ConfigVersion) -> VersionOut:
    return VersionOut(
        id=v.id, model=model, knobs=Knobs.model_validate(v.knobs), actor=v.actor, reason=v.reason,
        state=v.state, created_at=v.created_at, applied_at=v.applied_at, error=v.error,
    )  # fmt: skip


def last_changes(session: Session) -> dict[str, float]:
    return {name: v.applied_at or 0.0 for name, v in configs.applied(session).items()}


def proposal(
    plane: ControlPlane,
    session: Session,
    targets: Mapping[str, Knobs],
    actor: Actor,
    *,
    known_safe: bool = False,
) -> Proposal:
    """The one proposal path, with the fleet's running knobs and the store's pending ones."""
    return propose(
        plane.fleet.spec, plane.fleet.all_knobs(), targets, actor=actor, now=plane.clock(),
        pending=configs.pending_knobs(session), last_change=last_changes(session), known_safe=known_safe,
    )  # fmt: skip


def diff(before: Knobs, after: Knobs) -> dict[str, list[Any]]:
    a, b = before.model_dump(), after.model_dump()
    return {k: [a[k], b[k]] for k in a if a[k] != b[k]}


def propose_one(
    plane: ControlPlane,
    session: Session,
    model: str,
    target: Knobs,
    *,
    reason: str,
    dry_run: bool,
) -> ProposalOut:
    """The whole story of a person's proposal: limits, guardrails, memory; recorded unless a dry
    run, refused, or nothing changes (applying the same configuration twice does nothing)."""
    p = proposal(plane, session, {model: target}, "person")
    if p.refused_field is not None and p.refused_field.startswith("knobs.resources."):
        raise ApiError(422, p.refused or "", f"body.{p.refused_field}")  # a limit: even a dry run is wrong
    current = plane.fleet.knobs(model)
    proposed = p.knobs[model] if p.accepted else target
    device = plane.fleet.spec.model(model).device
    memory = p.memory[device]
    out = ProposalOut(
        model=model, dry_run=dry_run, current=current, proposed=proposed, diff=diff(current, proposed),
        clips=[ClipOut(knob=c.knob, asked=c.asked, got=c.got, rule=c.rule) for c in p.clips],
        memory=MemoryOut(device=device, used_gb=memory.used_gb, budget_gb=memory.budget_gb, fits=memory.fits),
        refused=p.refused, version=None,
    )  # fmt: skip
    if dry_run:
        return out
    if not p.accepted:
        raise ApiError(422, f"{model}: refused by the guardrails: {p.refused}", f"body.{p.refused_field}")
    recorded = configs.record(session, p, reason, plane.clock()).get(model)
    return out.model_copy(update={"version": recorded and version_out(model, recorded)})
