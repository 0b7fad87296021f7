"""A proposed configuration, from a person (the API) or an alert: checked against the server's
hard limits, passed through the guardrails, and recorded as a desired version for the reconciler.
Nothing here talks to Triton."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from controlplane.api.deps import ApiError
from controlplane.api.schemas import ClipOut, MemoryOut, ProposalOut, VersionOut
from controlplane.plane import ControlPlane
from domain.spec import Knobs, device_memory_used, resource_overages
from store import configs
from store.models import ConfigVersion
from tuner.guardrails import Guarded, Guardrails, guard


def version_out(model: str, v: ConfigVersion) -> VersionOut:
    return VersionOut(
        id=v.id, model=model, knobs=Knobs.model_validate(v.knobs), actor=v.actor, reason=v.reason,
        state=v.state, created_at=v.created_at, applied_at=v.applied_at, error=v.error,
    )  # fmt: skip


def last_changes(session: Session) -> dict[str, float]:
    return {name: v.applied_at or 0.0 for name, v in configs.applied(session).items()}


def check_limits(plane: ControlPlane, model: str, knobs: Knobs) -> None:
    """Limits no guardrail may move: the server's rate-limiter resource totals."""
    server = plane.fleet.spec.server(plane.fleet.spec.model(model).server)
    for res, count, total in resource_overages(knobs, server):
        raise ApiError(
            422, f"resources.{res}={count} exceeds server {server.name!r}'s total of {total}",
            f"body.knobs.resources.{res}",
        )  # fmt: skip


def guarded(
    plane: ControlPlane, session: Session, targets: Mapping[str, Knobs], now: float
) -> tuple[dict[str, Knobs], Guarded]:
    current = plane.fleet.all_knobs()
    return current, guard(
        plane.fleet.spec, current, targets, rails=Guardrails(), last_change=last_changes(session), now=now
    )


def diff(before: Knobs, after: Knobs) -> dict[str, list[Any]]:
    a, b = before.model_dump(), after.model_dump()
    return {k: [a[k], b[k]] for k in a if a[k] != b[k]}


def propose_one(
    plane: ControlPlane,
    session: Session,
    model: str,
    target: Knobs,
    *,
    actor: str,
    reason: str,
    dry_run: bool,
) -> ProposalOut:
    """The whole story of one proposal: limits, guardrails, memory; recorded unless a dry run,
    refused, or already what runs (applying the same configuration twice does nothing)."""
    check_limits(plane, model, target)
    now = plane.clock()
    current, g = guarded(plane, session, {model: target}, now)
    spec = plane.fleet.spec
    device = spec.device(spec.model(model).device)
    proposed = g.knobs[model] if g.refused is None else target
    used = device_memory_used(spec, {**current, model: proposed})[device.name]
    out = ProposalOut(
        model=model, dry_run=dry_run, current=current[model], proposed=proposed,
        diff=diff(current[model], proposed),
        clips=[ClipOut(knob=c.knob, asked=c.asked, got=c.got, rule=c.rule) for c in g.clips],
        memory=MemoryOut(device=device.name, used_gb=used, budget_gb=device.memory_gb, fits=used <= device.memory_gb),
        refused=g.refused, version=None,
    )  # fmt: skip
    if dry_run:
        return out
    if g.refused is not None:
        raise ApiError(422, f"{model}: refused by the guardrails: {g.refused}", "body.knobs.instances")
    pending = configs.desired(session).get(model)
    if proposed == current[model] and pending is None:
        return out  # nothing to change, nothing recorded
    version = configs.propose(session, model, proposed.model_dump(), actor, reason, now)
    return out.model_copy(update={"version": version_out(model, version)})
