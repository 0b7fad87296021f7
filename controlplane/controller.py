"""The continuous SLO controller: once a tick, read the store's newest windows, ask the pure policy
(`domain.control.decide`) what to do, and do it through the one proposal path like every other
writer: `propose` guards it, the store records it, the reconciler applies it. Every action is
journaled with its reason and evidence (`store.control`); in advisory mode nothing is recorded for
the reconciler, only what the controller would have done.

It stands aside while a one-shot tuning run owns the fleet, and a store outage pauses it (the fleet
keeps its configuration and keeps serving; the heartbeat says so).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from domain.control import (
    MODES,
    RUNGS,
    SHED,
    Candidate,
    ControlConfig,
    Decision,
    Mode,
    Observation,
    Reading,
    Rung,
    State,
    decide,
    gating_step,
    ladder,
    regime_key,
)
from domain.health import Heartbeat
from domain.proposal import Guardrails, propose
from domain.spec import FleetSpec, Knobs, Sla
from domain.windows import Aggregate, aggregate
from store import configs, queries
from store import control as records
from store import packing as packing_records
from store.db import Store

log = logging.getLogger("slatune.controller")

EFFECT_AFTER_S = 10.0
"""How long after a protective step its effect is read (applied, then a few 1 s windows)."""
REGIME_WINDOW_S = 30.0
"""Traffic is classified over this long: chat at 3 requests/s is 30 arrivals in 10 s, which wander
by a fifth (a regime flip), and 90 in 30 s."""
REGIME_LATEST_S = 10.0
"""The recent traffic that says whether the regime window still straddles a step (`traffic_moving`)."""
ALERT_HOLD_S = 10.0


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.level = Gauge(
            "slatune_controller_level", "Protective rungs applied on the incumbent", registry=registry
        )
        self.mode = Gauge(
            "slatune_controller_mode", "1 for the controller's mode", ["mode"], registry=registry
        )
        self.actions = Counter(
            "slatune_controller_actions_total",
            "The controller's actions, by kind and whether they were applied (advisory: not)",
            ["kind", "applied"],
            registry=registry,
        )
        self.exploring = Gauge(
            "slatune_controller_exploring", "1 while a neighbour is being tried", registry=registry
        )
        # What the loop itself costs: it shares the host's cores with the servers it protects.
        self.tick_seconds = Histogram(
            "slatune_controller_tick_seconds",
            "Wall time of one controller tick (read the store, decide, act)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.cpu_seconds = Counter(
            "slatune_controller_cpu_seconds_total",
            "CPU time the controller's ticks used (its thread's, Python and the store driver)",
            registry=registry,
        )


@dataclass(frozen=True)
class Action:
    """What one tick did, for callers and tests."""

    decision: Decision
    applied: bool
    refused: str | None = None


class Controller:
    def __init__(
        self,
        spec: FleetSpec,
        store: Store,
        running: Callable[[], dict[str, Knobs]],
        slas: Callable[[], Mapping[str, Sla | None]],
        *,
        mode: Mode = "on",
        config: ControlConfig | None = None,
        rails: Guardrails | None = None,
        nudge: Callable[[], None] = lambda: None,
        busy: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.running = running
        self.slas = slas
        self.mode: Mode = mode
        self.cfg = config or ControlConfig()
        self.rails = rails or Guardrails()
        self.nudge = nudge
        self.busy = busy
        self.clock = clock
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        self.heartbeat = Heartbeat("controller", stuck_after_s=60.0)
        self.state: State | None = None
        self.last: Action | None = None
        self._alert: tuple[str, float] | None = None
        self._effects: list[tuple[int, float]] = []
        self._windows = queries.RecentWindows()  # read every tick: only the new ones are loaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._set_mode_metric()

    # ------------------------------------------------------------------ control
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        with self._lock:
            self.mode = mode
            self.state = None  # a mode change starts again from what runs
        self._set_mode_metric()

    def alert(self, name: str) -> None:
        """A firing alert about a latency-critical model: the next tick treats it as a breach."""
        self._alert = (name, self.clock())

    def start(self) -> None:
        self._stop.clear()
        self.heartbeat.start()
        self._thread = threading.Thread(target=self._run, name="slatune-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.heartbeat.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.tick_s):
            try:
                self.tick()
                self.heartbeat.beat()
            except Exception as exc:  # a store outage pauses the controller; the fleet keeps serving
                log.warning("controller: %s", exc)
                self.heartbeat.beat(f"{exc.__class__.__name__}: {str(exc)[:200]}")

    # ------------------------------------------------------------------ one tick
    def tick(self) -> Action | None:
        """Read, decide, act once; its wall time and CPU are counted while the mode is not off."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._tick()
        finally:
            if self.mode != "off":
                self.metrics.tick_seconds.observe(time.perf_counter() - wall)
                self.metrics.cpu_seconds.inc(time.thread_time() - cpu)

    def _tick(self) -> Action | None:
        with self._lock:
            if self.mode == "off":
                return None
            owner = self.busy()
            if owner is not None:  # a tuning run owns the fleet: start again from what it leaves
                self.state = None
                return None
            now = self.clock()
            if self.state is None:
                self.state = State(incumbent=self.running())
            obs = self.observe(now)
            self._read_effects(now, obs)
            tried = self.state.candidate
            decision = decide(self.spec, obs, self.state, now, self.cfg, self._ladder())
            self.state = decision.state
            self.metrics.level.set(decision.state.level)
            self.metrics.exploring.set(1 if decision.state.candidate else 0)
            if decision.kind == "hold":
                log.debug(
                    "hold (level %d, applying %s): %s", decision.state.level, obs.applying, decision.reason
                )
                return None
            action = self._act(decision, obs, now, tried)
            self.last = action
            return action

    def observe(self, now: float) -> Observation:
        horizon = max(self.cfg.trial_s, REGIME_WINDOW_S, self.cfg.short_s, self.cfg.release_after_s)
        slas = self.slas()
        with self.store.session() as session:
            recent = self._windows.read(session, now - horizon)
            pending = records.latest_pending(session, now - self.cfg.short_s)
            applying = bool(configs.pending_knobs(session))
            known = records.known(session)
            regime_now = self.state.regime if self.state else None
            history = records.trials(session, regime_now) if regime_now else []
            elsewhere = records.trials(session, regime_now, elsewhere=True)
        # Right after a release, and through a trial, the change is judged on the windows since it,
        # not on 30 s that are mostly from before it (calm: that is why it released or explored).
        settled_since = now - self.cfg.release_after_s
        changed_at = None
        if self.state is not None and self.state.candidate is not None:
            changed_at = self.state.candidate.started_at - self.cfg.warmup_s
        elif self.state is not None and self.state.watching_release(now, self.cfg):
            changed_at = self.state.released_at
        if changed_at is not None:
            settled_since = max(settled_since, min(changed_at, now - self.cfg.watch_s))
        judged_since = [settled_since]
        if changed_at is not None and now - settled_since > self.cfg.watch_s:
            # The live table's own figure too, the last `watch_s`: the calm first seconds since the
            # change must not dilute a tail that broke later. The worst of the two is judged.
            judged_since.append(now - self.cfg.watch_s)
        sums: dict[tuple[str, float], Aggregate] = {}

        def over(name: str, since: float) -> Aggregate:
            """A model's windows since `since`, summed once a tick however many readers ask."""
            if (name, since) not in sums:
                sums[name, since] = aggregate([r for r in recent.get(name, []) if r.end >= since])
            return sums[name, since]

        readings = {}
        for m in self.spec.models:
            sla = slas.get(m.name)
            if m.role != "latency-critical" or sla is None:
                continue
            agg = over(m.name, now - self.cfg.short_s)
            settled = []  # (p99 ms, over how many s), one per judged window with traffic
            for since in judged_since:
                calm = over(m.name, since)
                if (ms := sla.value_of(p99_ms=calm.p99_ms, ttft_p99_ms=calm.ttft_p99_ms)) is not None:
                    settled.append((ms, now - since))
            settled_ms, settled_s = max(settled, default=(None, now - settled_since))
            readings[m.name] = Reading(
                m.name, sla.target_ms, sla.value_of(p99_ms=agg.p95_ms, ttft_p99_ms=agg.ttft_p95_ms),
                pending.get(m.name, 0.0), sum(agg.failures.values()),
                settled_ms=settled_ms, settled_s=round(settled_s),
            )  # fmt: skip
        traffic = {
            span: self._traffic(recent, over, now - span) for span in (REGIME_WINDOW_S, REGIME_LATEST_S)
        }
        bulk = [m.name for m in self.spec.models if m.role == "bulk"]
        goodput = sum(over(name, now - self.cfg.trial_s).inference_rate for name in bulk)
        alert = None
        if self._alert is not None and now - self._alert[1] <= ALERT_HOLD_S:
            alert = self._alert[0]
        previous = self.state.seen_regime if self.state else None
        regime = None
        # Traffic over less than the regime window is no regime yet: a fleet whose store starts
        # with its load keyed the ramp up, three regimes in the shift benchmark's first minute.
        first = min((rows[0].start for rows in recent.values() if rows), default=now)
        if now - first >= REGIME_WINDOW_S:
            regime = regime_key(
                self.spec, *traffic[REGIME_WINDOW_S], previous, list(known), latest=traffic[REGIME_LATEST_S]
            )
        queue = {name: over(name, now - self.cfg.short_s).avg_queue_ms for name in recent}
        gating = {
            name: step
            for name, r in readings.items()
            if (step := gating_step(self.spec, name, queue, r.target_ms)) is not None
        }
        return Observation(
            readings, regime, goodput, known, history, alert, applying, gating, elsewhere=elsewhere
        )

    @staticmethod
    def _traffic(
        recent: Mapping[str, Any], over: Callable[[str, float], Aggregate], since: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Each model's request rate and requests in flight since `since`."""
        rate, inflight = {}, {}
        for name in recent:
            agg = over(name, since)
            rate[name] = agg.request_rate
            # Little's law over the requests served (their mean time in the server): a client's
            # backlog, whatever the knobs.
            served = agg.success / agg.seconds if agg.seconds > 0 else 0.0
            inflight[name] = served * (agg.avg_request_ms or agg.p50_ms or 0.0) / 1000.0
        return rate, inflight

    def _act(self, decision: Decision, obs: Observation, now: float, tried: Candidate | None) -> Action:
        applied, refused, changes = False, None, {}
        worst = max((r.ratio for r in obs.readings.values()), default=None)
        with self.store.session() as session:
            if decision.target is not None:
                running = self.running()
                pending = configs.pending_knobs(session)
                proposal = propose(
                    self.spec, running, decision.target, actor="controller", now=now, pending=pending,
                    rails=self.rails, known_safe=decision.known_safe,
                )  # fmt: skip
                if not proposal.accepted:
                    refused = proposal.refused
                else:
                    changes = records.knobs_json(proposal.changes)
                    if self.mode == "on" and proposal.changes:
                        configs.record(
                            session, proposal, f"controller: {decision.kind}: {decision.reason}", now
                        )
                        applied = True
            st = decision.state
            # What held is known only where it ran: advisory configurations never did.
            if self.mode == "on" and st.regime is not None:
                if decision.keep:
                    records.keep(session, st.regime, st.incumbent, obs.goodput, decision.kind, now)
                elif decision.kept is not None:
                    records.keep(session, st.regime, decision.kept, obs.goodput, "held", now)
                self._note_trial(session, decision, obs, now, tried)
            action = records.add_action(
                session, at=now, mode=self.mode, kind=decision.kind, model=decision.model, rung=decision.rung,
                regime=st.regime, reason=decision.reason, window_start=now - self.cfg.short_s, window_end=now,
                changes=changes, applied=applied, refused=refused,
                before_ratio=None if worst is None or worst == float("inf") else worst,
            )  # fmt: skip
            if decision.cannot_share and self.mode == "on":  # measured with the protection really in force
                self._learn_cannot_share(session, decision, obs, now)
            if decision.kind in ("protect", "panic") and applied:
                self._effects.append((action.id, now + EFFECT_AFTER_S))
        if applied:
            self.nudge()
        if refused:
            log.warning("controller: %s refused: %s", decision.kind, refused)
        else:
            log.info("controller: %s: %s", decision.kind, decision.reason)
        self.metrics.actions.labels(decision.kind, "yes" if applied else "no").inc()
        return Action(decision, applied, refused)

    def _learn_cannot_share(self, session: Session, decision: Decision, obs: Observation, now: float) -> None:
        model = decision.model or ""
        reading = obs.readings.get(model)
        evidence = {
            "sla_target_ms": reading.target_ms if reading else None,
            "p99_ms": reading.settled_ms if reading else None,
            "p95_ms": reading.value_ms if reading else None,
            "window": [now - self.cfg.release_after_s, now],
            "regime": decision.state.regime,
            "protective_rungs": [rung.name for rung in self._ladder()],
        }
        for bulk in decision.cannot_share:
            packing_records.record_cannot_share(
                session, model, bulk, source="controller", summary=decision.reason, evidence=evidence, now=now
            )

    def _note_trial(
        self, session: Session, decision: Decision, obs: Observation, now: float, tried: Candidate | None
    ) -> None:
        """A neighbour's outcome joins the regime's history (it ranks the next neighbours)."""
        st = decision.state
        if decision.kind not in ("adopt", "reject", "abandon") or st.regime is None:
            return
        if decision.kind == "adopt":
            records.add_trial(session, st.regime, "adopted", st.incumbent, True, obs.goodput, now)
            return
        if tried is not None:
            safe = decision.kind == "reject"
            records.add_trial(
                session, st.regime, tried.what, tried.knobs, safe, obs.goodput if safe else 0.0, now
            )

    # ------------------------------------------------------------------ history
    def _ladder(self) -> list[Rung]:
        return ladder(self._effects_by_rung(), RUNGS + ((SHED,) if self.cfg.shed else ()))

    def _effects_by_rung(self) -> dict[str, float]:
        try:
            with self.store.session() as session:
                return records.rung_effects(session)
        except Exception:  # the default order when the store cannot say
            return {}

    def _read_effects(self, now: float, obs: Observation) -> None:
        """Record the effect of protective steps whose time has come, from this tick's readings."""
        due = [(i, t) for i, t in self._effects if t <= now]
        if not due:
            return
        self._effects = [(i, t) for i, t in self._effects if t > now]
        worst = max((r.ratio for r in obs.readings.values()), default=None)
        if worst is None or worst == float("inf"):
            return
        with self.store.session() as session:
            for action_id, _ in due:
                records.set_effect(session, action_id, worst)

    # ------------------------------------------------------------------ reading
    def status(self, limit: int = 20) -> dict[str, Any]:
        st = self.state
        with self.store.session() as session:
            acts = records.actions(session, limit)
            incumbents = {
                regime: {"goodput": k.goodput, "knobs": records.knobs_json(k.knobs)}
                for regime, k in records.known(session).items()
            }
            last = [
                {
                    "at": a.at, "mode": a.mode, "kind": a.kind, "model": a.model, "rung": a.rung, "regime": a.regime,
                    "reason": a.reason, "applied": a.applied, "refused": a.refused, "changes": a.changes,
                    "window": [a.window_start, a.window_end], "before_ratio": a.before_ratio,
                    "after_ratio": a.after_ratio,
                }
                for a in acts
            ]  # fmt: skip
        return {
            "mode": self.mode,
            "loop": self.heartbeat.status(),
            "regime": None if st is None else st.regime,
            "level": 0 if st is None else st.level,
            "exploring": None if st is None or st.candidate is None else st.candidate.what,
            "incumbent": None if st is None else records.knobs_json(st.incumbent),
            "ladder": [r.name for r in self._ladder()],
            "last_actions": last,
            "incumbents": incumbents,
        }

    def _set_mode_metric(self) -> None:
        for m in MODES:
            self.metrics.mode.labels(m).set(1.0 if m == self.mode else 0.0)
