"""Tuning runs started from the API or `slatune up`: one at a time, each on its own thread, stopped
on request (the best feasible configuration measured so far stays applied)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna

from domain.proposal import Guardrails
from domain.spec import FleetSpec, Sla
from store.db import Store
from tuner.live import Reconciles, run_study
from tuner.loop import Outcome, TuningConfig

log = logging.getLogger("slatune.tuning")


class TuningBusy(RuntimeError):
    pass


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

    def start(
        self,
        *,
        budget: int,
        window_s: float,
        warmup_s: float,
        models: tuple[str, ...] | None,
        study_name: str | None = None,
        seed: int | None = None,
    ) -> int:
        """Start a run on a thread; return its id once it is recorded. TuningBusy if one runs."""
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
            active = _Active(None, threading.Thread(), stop)

            def recorded(run_id: int) -> None:
                active.run_id = run_id
                started.set()

            def body() -> None:
                try:
                    run_study(
                        self.reconciler, self.store, config, name, self.optuna_url, seed=seed, stop=stop,
                        on_outcome=self._on_outcome, on_start=recorded, spec=spec,
                        storage=self._storage(self.optuna_url),
                    )  # fmt: skip
                except Exception:
                    log.exception("tuning run %s failed", name)
                finally:
                    started.set()

            active.thread = threading.Thread(target=body, name="slatune-tuning", daemon=True)
            self._active = active
            active.thread.start()
            started.wait(30)
            if active.run_id is None:
                raise RuntimeError(f"tuning run {name} could not be recorded (see the log)")
            return active.run_id

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
