"""The reconciler: desired configurations in the store become applied ones on the fleet.

Each cycle compares every model's newest desired version with the knobs its Triton reports and
applies the difference through the runtime (the only package that talks to Triton). A desired
version Triton already runs is only recorded as applied: applying the same desired configuration
twice does nothing.

Every apply is journaled before it starts and closed when it ends. At start-up `recover()` looks
for entries left open by a control plane that died mid-apply and reads the fleet's real state: if
Triton runs the version, it is recorded as applied (not applied again); if not, the entry is
closed as interrupted and the version stays desired, so the next cycle applies it once.

Cycles run one at a time (a lock), so concurrent changes to one model are serialised; only a
model's newest version is trusted, and older ones still desired are recorded as overtaken, so an
older decision is never applied after a newer one.

The reconciler is level-triggered: a temporary failure (the server did not answer within its
deadline, or is down) leaves the version desired, and it is tried again with capped exponential
backoff (1, 2, 4 ... 30 s) for as long as it is the newest: there is no attempt limit. A server
that failed to answer is not called again in the same cycle, so a hung server costs a cycle one
deadline. A permanent failure (Triton refused the configuration) marks the version failed with
the server's message at once, and the previous configuration stays in place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from controlplane.telemetry import ControlPlaneMetrics
from domain.health import Heartbeat, backoff_s
from domain.spec import Knobs
from runtime.fleet import Fleet, ReconfigurationError
from store import configs
from store.db import Store
from store.models import ConfigVersion

log = logging.getLogger("slatune.reconciler")

Outcome = Literal["applied", "unchanged", "failed", "retry", "waiting"]
TERMINAL_STATES = ("applied", "failed", "superseded")


@dataclass(frozen=True)
class Step:
    model: str
    version_id: int
    knobs: Knobs
    needs_apply: bool
    """False when Triton already runs these knobs: only the record changes."""


def plan(
    desired: Mapping[str, tuple[int, Knobs]], running: Mapping[str, Knobs], first: Iterable[str] = ()
) -> list[Step]:
    """The difference between what is asked for and what runs, one step per model (pure). The
    models in `first` (the latency-critical ones) are applied before the others: a protective step
    that gives the guard a spare instance (in place, under a second) must not wait behind bulk
    models' reloads (several seconds each on a loaded host). A max batch size of 0 asks for what
    the model runs."""
    early = set(first)
    return [
        Step(model, version_id, knobs, running.get(model) != knobs.resolved(running.get(model, knobs)))
        for model, (version_id, knobs) in sorted(desired.items(), key=lambda kv: (kv[0] not in early, kv[0]))
    ]


@dataclass(frozen=True)
class Result:
    model: str
    version_id: int
    outcome: Outcome
    path: str | None = None
    error: str | None = None


@dataclass
class _Retry:
    attempts: int
    next_at: float


class Reconciler:
    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        *,
        metrics: ControlPlaneMetrics | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 2.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.metrics = metrics or ControlPlaneMetrics()
        self.clock = clock
        self.poll_s = poll_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        # A cycle applies one change at most per model, each bounded by the runtime's deadlines,
        # and calls a server that did not answer no more that cycle.
        self.heartbeat = Heartbeat("reconciler", stuck_after_s=max(4 * poll_s, 60.0))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retries: dict[int, _Retry] = {}
        self.last_cycle_at: float | None = None

    # ------------------------------------------------------------------ start-up
    def recover(self) -> list[Result]:
        """Close the journal entries a dead control plane left open, from what Triton runs now."""
        results = []
        with self._lock, self.store.session() as session:
            for model, entry, version in configs.open_entries(session):
                wanted = Knobs.model_validate(version.knobs)
                try:
                    running = self.fleet.observed_knobs(model)
                except ReconfigurationError as exc:
                    log.warning(
                        "recovery of journal entry %d: %s; left open for the next start", entry.id, exc
                    )
                    continue
                now = self.clock()
                if running == wanted:
                    configs.close_entry(session, entry.id, "applied", now, error="recovered: Triton runs it")
                    if version.state == "desired":
                        configs.mark_applied(session, version, now)
                    outcome: Outcome = "applied"
                else:
                    configs.close_entry(
                        session, entry.id, "interrupted", now, error="the control plane stopped mid-apply"
                    )
                    outcome = "waiting"  # still desired: the next cycle applies it, once
                self.metrics.recovered.labels("applied" if outcome == "applied" else "interrupted").inc()
                log.warning("journal entry %d (%s, version %d): %s", entry.id, model, version.id, outcome)
                results.append(Result(model, version.id, outcome))
        return results

    # ------------------------------------------------------------------ one cycle
    def reconcile_once(self, models: Iterable[str] | None = None) -> list[Result]:
        """Apply every model's newest desired version that differs from what Triton runs."""
        scope = None if models is None else set(models)
        with self._lock:
            self.metrics.reconcile_cycles.inc()
            self.last_cycle_at = self.clock()
            with self.store.session() as session:
                for older in configs.supersede_overtaken(session):
                    log.warning("version %d: %s", older.id, older.error)
                pending = configs.desired(session)
                wanted = {
                    name: (v.id, Knobs.model_validate(v.knobs))
                    for name, v in pending.items()
                    if name in self.fleet.spec.model_names and (scope is None or name in scope)
                }
            self.metrics.desired_pending.set(len(pending))
            if scope is None:  # versions no longer desired need no retry schedule
                ids = {v.id for v in pending.values()}
                self._retries = {i: r for i, r in self._retries.items() if i in ids}
            results = []
            running: dict[str, Knobs] = {}
            down: dict[str, ReconfigurationError] = {}  # servers that did not answer this cycle
            for name, (version_id, _) in wanted.items():
                retry = self._retries.get(version_id)
                if retry is not None and self.clock() < retry.next_at:
                    results.append(Result(name, version_id, "waiting"))  # backing off
                    continue
                server = self.fleet.spec.model(name).server
                try:
                    if server in down:
                        raise down[server]
                    running[name] = self.fleet.observed_knobs(name)
                except ReconfigurationError as exc:
                    if exc.temporary:
                        down.setdefault(server, exc)
                    results.append(self._failed(name, version_id, exc))
            critical = [m.name for m in self.fleet.spec.models if m.role == "latency-critical"]
            for step in plan({m: w for m, w in wanted.items() if m in running}, running, critical):
                server = self.fleet.spec.model(step.model).server
                if server in down:
                    results.append(self._failed(step.model, step.version_id, down[server]))
                    continue
                result, error = self._settle(step)
                if error is not None and error.temporary:
                    down[server] = error
                results.append(result)
            return results

    def _settle(self, step: Step) -> tuple[Result, ReconfigurationError | None]:
        if not step.needs_apply:
            with self.store.session() as session:
                version = session.get(ConfigVersion, step.version_id)
                assert version is not None
                configs.mark_applied(session, version, self.clock())
            self._retries.pop(step.version_id, None)
            self.metrics.reconfigurations.labels(step.model, "unchanged", "unchanged").inc()
            return Result(step.model, step.version_id, "unchanged", "unchanged"), None
        with self.store.session() as session:  # journaled (committed) before the apply starts
            version = session.get(ConfigVersion, step.version_id)
            assert version is not None
            entry_id = configs.open_entry(session, version, self.clock()).id
        began = time.monotonic()
        try:
            result = self.fleet.apply(step.model, step.knobs)
        except ReconfigurationError as exc:
            return self._failed(step.model, step.version_id, exc, entry_id), exc
        finally:
            self.metrics.apply_seconds.observe(time.monotonic() - began)
        with self.store.session() as session:
            version = session.get(ConfigVersion, step.version_id)
            assert version is not None
            now = self.clock()
            configs.close_entry(session, entry_id, "applied", now, path=result.path)
            configs.mark_applied(session, version, now)
        self._retries.pop(step.version_id, None)
        self.metrics.reconfigurations.labels(step.model, "applied", result.path).inc()
        log.info(
            "%s: version %d applied (%s, %.2f s)", step.model, step.version_id, result.path, result.seconds
        )
        return Result(step.model, step.version_id, "applied", result.path), None

    def _failed(
        self, model: str, version_id: int, exc: ReconfigurationError, entry_id: int | None = None
    ) -> Result:
        attempts = self._retries[version_id].attempts + 1 if version_id in self._retries else 1
        temporary = exc.temporary  # level-triggered: retried for as long as it is the newest
        now = self.clock()
        with self.store.session() as session:
            if entry_id is not None:
                configs.close_entry(
                    session, entry_id, "retry" if temporary else "failed", now, error=str(exc)
                )
            if not temporary:
                version = session.get(ConfigVersion, version_id)
                assert version is not None
                configs.mark_failed(session, version, str(exc))
        self.metrics.reconcile_failures.labels(model, "temporary" if exc.temporary else "permanent").inc()
        if temporary:
            delay = backoff_s(attempts, self.backoff_base_s, self.backoff_max_s)
            self._retries[version_id] = _Retry(attempts, now + delay)
            log.warning("%s: version %d: %s; retry %d in %.0f s", model, version_id, exc, attempts, delay)
            return Result(model, version_id, "retry", error=str(exc))
        self._retries.pop(version_id, None)
        self.metrics.reconfigurations.labels(model, "failed", "none").inc()
        log.error("%s: version %d failed: %s", model, version_id, exc)
        return Result(model, version_id, "failed", error=str(exc))

    # ------------------------------------------------------------------ waiting for a version
    def converge(self, version_ids: Iterable[int], timeout_s: float = 60.0) -> dict[int, str]:
        """Reconcile until every version is applied, failed or overtaken, or `timeout_s` passes;
        return each version's state (a version still `desired` timed out)."""
        ids = list(version_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            states = self._states(ids)
            if all(s in TERMINAL_STATES for s in states.values()) or time.monotonic() >= deadline:
                return states
            self.reconcile_once()
            states = self._states(ids)
            if all(s in TERMINAL_STATES for s in states.values()):
                return states
            self._stopping.wait(min(0.25, max(deadline - time.monotonic(), 0)))

    def _states(self, ids: list[int]) -> dict[int, str]:
        with self.store.session() as session:
            out = {}
            for i in ids:
                version = session.get(ConfigVersion, i)
                out[i] = version.state if version is not None else "missing"
            return out

    # ------------------------------------------------------------------ the loop
    def nudge(self) -> None:
        """Run a cycle now rather than at the next poll (new desired versions, an alert)."""
        self._wake.set()

    def start(self) -> None:
        self._stopping.clear()
        self.heartbeat.start()
        self._thread = threading.Thread(target=self._run, name="slatune-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.heartbeat.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile_once()
                self.heartbeat.beat()
            except Exception as exc:  # a store outage must not end reconciliation for good
                log.exception("reconcile cycle failed; next one in %.0f s", self.poll_s)
                self.heartbeat.beat(f"{exc.__class__.__name__}: {exc}")
            self._wake.wait(self.poll_s)
            self._wake.clear()
