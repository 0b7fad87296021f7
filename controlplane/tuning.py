"""Tuning runs started from the API or `slatune up`: one at a time, each on its own thread, stopped
on request (the best feasible configuration measured so far stays applied).

A run belongs to the process that runs it (its `Owner`, recorded with the run, with a heartbeat).
At start-up, a run the store says is `running` whose owner died is `interrupted`: its trial
configuration still waiting to be applied is superseded, and its last safe configuration is
written back, through the one proposal path, before the reconciler starts. A person then resumes
it (the same study, no told trial repeated) or discards it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from domain.health import Heartbeat
from domain.proposal import Guardrails, propose
from domain.spec import FleetSpec, Knobs, Sla
from runtime.fleet import Fleet, ReconfigurationError
from store import configs, tuning
from store.db import Store
from tuner.live import Reconciles, RunNotResumable, run_study
from tuner.loop import (
    Outcome,
    TuningConfig,
    best_feasible,
    fail_interrupted,
    knobs_from_attr,
    knobs_to_attr,
)

log = logging.getLogger("slatune.tuning")

HEARTBEAT_S = 5.0
"""How often a running run's owner renews its lease."""
LEASE_S = 60.0
"""A run owned by a process on another host is taken as dead after this long without a heartbeat."""
DEFAULT_WARMUP_S = 5.0
"""A resumed run recorded before runs kept their warmup gets the API's default."""


class TuningBusy(RuntimeError):
    pass


# ---------------------------------------------------------------------- who owns a run
def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), so a reused pid is not
    taken for the process that died; "" where /proc is not there; None if no such live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is dead; field 22 is starttime


@dataclass(frozen=True)
class Owner:
    """A process that runs tuning runs: its host, pid and start time."""

    host: str
    pid: int
    started: str

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.started}"

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        try:
            host, pid, started = (text or "").rsplit("/", 2)
            return cls(host, int(pid), started)
        except ValueError:
            return None

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()) or "")


def process_alive(owner: Owner) -> bool:
    """Whether `owner`'s process still runs on this host (the same pid and the same start time)."""
    started = _process_start(owner.pid)
    if started is None:
        return False
    if started and owner.started:
        return started == owner.started
    try:  # no /proc: the pid alone
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def owner_died(
    owner: str | None,
    heartbeat_at: float | None,
    now: float,
    *,
    me: Owner,
    ours: bool,
    alive: Callable[[Owner], bool],
    lease_s: float = LEASE_S,
) -> str | None:
    """Why a `running` run's owner is dead, or None while it may be alive. This process owns a run
    only while one of its runners runs it (`ours`); another process on this host is alive while
    its pid runs with the same start time; one on another host while its lease holds."""
    who = Owner.parse(owner)
    if who is None:
        return "it has no owner on record"
    if who == me:
        return None if ours else f"no runner of this process ({who}) runs it"
    if who.host == me.host:
        return None if alive(who) else f"its process {who} is gone"
    if heartbeat_at is not None and now - heartbeat_at < lease_s:
        return None
    silent = "never" if heartbeat_at is None else f"{now - heartbeat_at:.0f} s"
    return f"its owner {who} on another host has not renewed its lease ({silent}, lease {lease_s:.0f} s)"


def _observed(fleet: Fleet) -> dict[str, Knobs]:
    """What each model's Triton runs (an attached server kept the dead process's last apply, which
    the fleet's own record of its start-up knobs does not know); what the fleet last applied for
    a model whose server does not answer."""
    out = fleet.all_knobs()
    for name in out:
        try:
            out[name] = fleet.observed_knobs(name)
        except ReconfigurationError as exc:
            log.warning("%s", exc)
    return out


_live_lock = threading.Lock()
_live: set[int] = set()
"""The runs a runner of this process runs now."""


def _running_here(run_id: int) -> bool:
    with _live_lock:
        return run_id in _live


# ---------------------------------------------------------------------- the last safe configuration
@dataclass(frozen=True)
class SafeConfiguration:
    knobs: dict[str, Knobs]
    """The models in the run's scope, and what each should run."""
    source: str
    """Where it comes from, for the versions' reason."""
    trial: FrozenTrial | None = None
    """The trial that measured it safe, if one did."""


def last_safe(
    models: Sequence[str],
    trials: Sequence[FrozenTrial],
    before: Mapping[str, Knobs],
    spec: Mapping[str, Knobs],
) -> tuple[SafeConfiguration, ...]:
    """Where an interrupted run leaves the models in its scope, best first (the first the proposal
    path accepts is written): its best feasible trial so far, else what each model ran before the
    run (`before`, its newest applied knobs not written by the run), else the spec's knobs."""
    out = []
    best = best_feasible(trials, 1)
    if best:
        knobs = knobs_from_attr(best[0].user_attrs["knobs"])
        scoped = {m: knobs[m] for m in models if m in knobs}
        if scoped:
            out.append(SafeConfiguration(scoped, f"its best feasible trial {best[0].number}", best[0]))
    fallback = {m: before[m] if m in before else spec[m] for m in models if m in before or m in spec}
    if fallback:
        from_spec = sorted(m for m in fallback if m not in before)
        source = "the configuration applied before it" + (
            f" (the spec's knobs for {', '.join(from_spec)})" if from_spec else ""
        )
        out.append(SafeConfiguration(fallback, source))
    return tuple(out)


@dataclass(frozen=True)
class Interrupted:
    """What start-up did about one run whose owner died."""

    run_id: int
    why: str
    superseded: tuple[int, ...]
    """The run's versions that were waiting to be applied."""
    restored: SafeConfiguration | None
    """The configuration written back (None: none was accepted, or nothing to change)."""
    versions: tuple[int, ...]
    """The desired versions written for it."""


def with_slas(spec: FleetSpec, slas: Mapping[str, Sla | None]) -> FleetSpec:
    """The spec with the SLAs the store holds now (an operator may have changed them)."""
    models = [m.model_copy(update={"sla": slas.get(m.name, m.sla)}) for m in spec.models]
    return spec.model_copy(update={"models": models})


@dataclass
class _Active:
    run_id: int | None
    thread: threading.Thread
    stop: threading.Event


class TuningRunner:
    def __init__(
        self,
        reconciler: Reconciles,
        store: Store,
        optuna_url: str,
        slas: Callable[[], Mapping[str, Sla | None]],
        storage: Callable[[str], optuna.storages.BaseStorage],
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.store = store
        self.optuna_url = optuna_url
        self._slas = slas
        self._storage = storage
        self._on_outcome = on_outcome
        self._active: _Active | None = None
        self._lock = threading.Lock()
        self.owner = Owner.this_process()
        # A pass of the tuner waits at most for one apply (120 s) or one check of its window.
        self.heartbeat = Heartbeat("tuner", stuck_after_s=180.0)

    def start(
        self,
        *,
        budget: int,
        window_s: float,
        warmup_s: float,
        models: tuple[str, ...] | None,
        study_name: str | None = None,
        seed: int | None = None,
        resume: int | None = None,
    ) -> int:
        """Start a run on a thread (or continue run `resume`, its study named `study_name`); return
        its id once it is recorded. TuningBusy if one runs; RunNotResumable if `resume` is not."""
        with self._lock:
            if self.active_run is not None:
                raise TuningBusy(f"tuning run {self.active_run} is still running; stop it first")
            spec = with_slas(self.reconciler.fleet.spec, self._slas())
            config = TuningConfig(
                budget=budget, warmup_s=warmup_s, window_s=window_s, check_every_s=max(window_s / 4, 1.0),
                models=models, rails=Guardrails(),
            )  # fmt: skip
            name = (
                study_name or f"slatune-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
            )
            started = threading.Event()
            stop = threading.Event()
            finished = threading.Event()
            refused: list[RunNotResumable] = []
            active = _Active(None, threading.Thread(), stop)

            def recorded(run_id: int) -> None:
                with _live_lock:
                    _live.add(run_id)
                active.run_id = run_id
                threading.Thread(
                    target=self._beat, args=(run_id, finished), name="slatune-tuning-lease", daemon=True
                ).start()
                started.set()

            def body() -> None:
                self.heartbeat.start()
                try:
                    run_study(
                        self.reconciler, self.store, config, name, self.optuna_url, seed=seed, stop=stop,
                        on_outcome=self._on_outcome, on_start=recorded, spec=spec,
                        storage=self._storage(self.optuna_url), owner=str(self.owner), resume=resume,
                        heartbeat=self.heartbeat,
                    )  # fmt: skip
                except RunNotResumable as exc:
                    refused.append(exc)
                except Exception:
                    log.exception("tuning run %s failed", name)
                finally:
                    self.heartbeat.stop()
                    finished.set()
                    if active.run_id is not None:
                        with _live_lock:
                            _live.discard(active.run_id)
                    started.set()

            active.thread = threading.Thread(target=body, name="slatune-tuning", daemon=True)
            self._active = active
            active.thread.start()
            started.wait(30)
            if active.run_id is None:
                if refused:
                    raise refused[0]
                raise RuntimeError(f"tuning run {name} could not be recorded (see the log)")
            return active.run_id

    def resume(self, run_id: int) -> int:
        """Continue an interrupted or stopped run: the same study (a trial its death left running
        is failed, none told is repeated), its budget, window, warmup and models in scope."""
        with self.store.session() as session:
            run = tuning.run(session, run_id)
            if run is None or run.status not in tuning.RESUMABLE:
                raise RunNotResumable(run_id, run.status if run else None)
            budget, window_s, warmup_s, models, name = (
                run.budget, run.window_s, run.warmup_s, run.models, run.study_name
            )  # fmt: skip
        names = self.reconciler.fleet.spec.model_names
        scope = tuple(m for m in models if m in names)
        return self.start(
            budget=budget, window_s=window_s, warmup_s=DEFAULT_WARMUP_S if warmup_s is None else warmup_s,
            models=scope if scope and len(scope) < len(names) else None, study_name=name, resume=run_id,
        )  # fmt: skip

    def _beat(self, run_id: int, finished: threading.Event) -> None:
        """Renew this process's lease on the run until it ends."""
        while not finished.wait(HEARTBEAT_S):
            try:
                with self.store.session() as session:
                    if not tuning.beat(session, run_id, str(self.owner), time.time()):
                        log.warning("tuning run %d is no longer this process's; its lease lapses", run_id)
                        return
            except Exception:  # a store outage must not end the run; the next beat retries
                log.exception("tuning run %d: heartbeat failed", run_id)

    def recover(self, now: float | None = None) -> list[Interrupted]:
        """At start-up, before the reconciler starts: every `running` run whose owner died is
        `interrupted`. Its trial configuration still waiting to be applied is superseded (never
        applied: no tuner is left to measure or revert it), and its last safe configuration
        (`last_safe`) is written as desired versions through the proposal path, for the
        reconciler to apply. A run another live process owns is left alone."""
        now = time.time() if now is None else now
        with self.store.session() as session:
            orphans = [
                (r.id, why)
                for r in tuning.running(session)
                if (
                    why := owner_died(
                        r.owner, r.heartbeat_at, now, me=self.owner, ours=_running_here(r.id), alive=process_alive
                    )
                )
            ]  # fmt: skip
        return [self._interrupt(run_id, why, now) for run_id, why in orphans]

    def _trials(self, run_id: int) -> list[FrozenTrial]:
        """The run's trials, its interrupted one failed (none if its study cannot be read: the
        configuration from before the run is safe without them)."""
        with self.store.session() as session:
            run = tuning.run(session, run_id)
            assert run is not None
            name, url = run.study_name, run.optuna_storage
        try:
            study = optuna.load_study(study_name=name, storage=self._storage(url))
        except KeyError:
            return []  # it died before its study was created
        except Exception:
            log.exception("tuning run %d: its study %s cannot be read", run_id, name)
            return []
        fail_interrupted(study)
        return list(study.trials)

    def _interrupt(self, run_id: int, why: str, now: float) -> Interrupted:
        trials = self._trials(run_id)
        fleet = self.reconciler.fleet
        spec = fleet.spec
        label = f"tuning run {run_id} was interrupted ({why})"
        restored: SafeConfiguration | None = None
        written: dict[str, int] = {}
        with self.store.session() as session:
            run = tuning.run(session, run_id)
            assert run is not None
            run.status, run.ended_at = "interrupted", now
            superseded = []
            for _, version in tuning.desired_of(session, run):
                version.state, version.error = (
                    "superseded",
                    f"{label}: its trial configuration was never measured",
                )
                superseded.append(version.id)
            session.flush()
            before = {m: Knobs.model_validate(k) for m, k in tuning.applied_before(session, run).items()}
            pending = configs.pending_knobs(session)
            # A model someone else asked to change since keeps their newer decision.
            models = [m for m in run.models if m in spec.model_names and m not in pending]
            current = _observed(fleet)
            for candidate in last_safe(models, trials, before, {m.name: m.knobs for m in spec.models}):
                proposal = propose(
                    spec, current, candidate.knobs, actor="tuner", now=now, pending=pending, known_safe=True
                )
                if not proposal.accepted:
                    log.error("%s: %s refused: %s", label, candidate.source, proposal.refused)
                    continue
                restored = candidate
                reason = f"tuner: {label}; back to {candidate.source}"
                written = {m: v.id for m, v in configs.record(session, proposal, reason, now).items()}
                if candidate.trial is not None:
                    run.best = {
                        "knobs": knobs_to_attr(knobs_from_attr(candidate.trial.user_attrs["knobs"])),
                        "score": candidate.trial.user_attrs.get("score"),
                        "trials": [candidate.trial.number],
                        "measured": [],
                    }
                break
        log.warning(
            "%s: %d waiting version(s) superseded; %s", label, len(superseded),
            f"back to {restored.source}: {written or 'nothing to change'}" if restored else "no safe configuration accepted",
        )  # fmt: skip
        return Interrupted(run_id, why, tuple(superseded), restored, tuple(sorted(written.values())))

    @property
    def active_run(self) -> int | None:
        a = self._active
        return a.run_id if a is not None and a.thread.is_alive() else None

    def stop(self, run_id: int | None = None, wait_s: float = 0.0) -> bool:
        """Ask the running run (`run_id`, if given, must be it) to stop, waiting up to `wait_s`
        for it to apply its best configuration and end; False when no such run is running."""
        a = self._active
        if a is None or not a.thread.is_alive() or (run_id is not None and a.run_id != run_id):
            return False
        a.stop.set()
        a.thread.join(wait_s)
        return True
