"""Alerts: an Alertmanager-compatible webhook receiver. It records each alert, asks the alert
policy what to do, records that as desired configurations and nudges the reconciler. It never
calls Triton itself."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from controlplane.api.deps import Authorized, PlaneDep, SessionDep
from controlplane.api.proposals import proposal, version_out
from controlplane.api.schemas import AlertOut, AmWebhook, ErrorOut, WebhookOut
from controlplane.policy import Alert, KnownGood, concerns_slo, on_alert
from domain.spec import Knobs
from store import alerts as alert_store
from store import configs

router = APIRouter(prefix="/alerts", tags=["alerts"])


def known_good(session: Session) -> KnownGood | None:
    """The best configuration of the newest tuning run that found one."""
    best = alert_store.newest_best(session)
    if best is None:
        return None
    return KnownGood(best[0], {m: Knobs.model_validate(k) for m, k in best[1].items()})


ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip


@router.post("", response_model=WebhookOut, responses=ERRORS, dependencies=[Authorized])
def webhook(body: AmWebhook, plane: PlaneDep) -> WebhookOut:
    """Alertmanager's webhook (point a `webhook_configs` receiver here with
    `http_config.authorization.credentials` set to the token). A firing alert labelled with a
    latency-critical `model` goes to the SLO controller when it is on (its fast loop protects at
    once); otherwise it falls back to the newest tuning run's best configuration."""
    now = plane.clock()
    decisions, proposed = [], []
    with plane.store.session() as session:  # committed before the reconciler is nudged
        good = known_good(session)
        for a in body.alerts:
            row = alert_store.record(
                session, now, a.status, a.labels, a.annotations, a.fingerprint, a.startsAt, a.endsAt
            )
            name, model = a.labels.get("alertname", "unnamed"), a.labels.get("model")
            plane.metrics.alerts.labels(name, a.status).inc()
            alert = Alert(name, a.status, model)
            if plane.controller.mode == "on" and concerns_slo(plane.fleet.spec, alert):
                # The SLO controller's fast loop takes it as a breach on its next tick.
                plane.controller.alert(f"{name} on {model}")
                decisions.append(f"{name} on {model}: handed to the SLO controller")
                plane.metrics.decisions.labels("controller").inc()
                continue
            decision = on_alert(plane.fleet.spec, alert, plane.fleet.all_knobs(), good)
            decisions.append(decision.reason)
            plane.metrics.decisions.labels("propose" if decision.proposed else "none").inc()
            if not decision.proposed:
                continue
            # A fallback to a configuration a tuning run measured safe: at once, not step by step.
            p = proposal(plane, session, decision.proposed, "alert", known_safe=True)
            if not p.accepted:
                decisions.append(f"refused by the guardrails: {p.refused}")
                continue
            versions = configs.record(session, p, decision.reason, now)
            proposed += [version_out(m, v) for m, v in versions.items()]
            row.handled = row.handled or bool(versions)
    plane.reconciler.nudge()
    return WebhookOut(recorded=len(body.alerts), decisions=decisions, proposed=proposed)


@router.get("", response_model=list[AlertOut], responses={422: {"model": ErrorOut}})
def alerts(session: SessionDep, limit: int = Query(100, ge=1, le=10_000)) -> list[AlertOut]:
    """Alerts received, newest first."""
    return [
        AlertOut(
            id=r.id,
            received_at=r.received_at,
            status=r.status,
            alertname=r.alertname,
            model=r.model,
            labels=r.labels,
            annotations=r.annotations,
            handled=r.handled,
        )
        for r in alert_store.received(session, limit)
    ]
