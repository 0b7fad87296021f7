"""Start-up: the one way slatune is brought up, by `slatune up`, by the tests and by the benchmarks.

In order: migrate the store; start the fleet from the spec, resuming each model's last applied
configuration unless asked not to; tell the store what runs (servers, models, SLAs, and a
`startup` version where the running knobs are not the applied version); start the control plane's
loops (collectors, reconciler) and, if asked, the REST API. Stopping runs the other way: the
control plane (tuning, reconciler, collectors), the API, the fleet, the store. On a failure part
way, whatever was started is stopped again.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from controlplane.app import create_app
from controlplane.plane import ControlPlane
from controlplane.serve import ApiServer
from controlplane.settings import Settings
from domain.spec import FleetSpec, Knobs, memory_problems
from runtime.fleet import Fleet
from runtime.server import Endpoints
from store import configs, queries
from store.db import Store

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class System:
    settings: Settings
    store: Store
    fleet: Fleet
    plane: ControlPlane
    api: ApiServer | None


def resume_knobs(spec: FleetSpec, store: Store) -> tuple[FleetSpec, list[str]]:
    """The spec with each model's last applied configuration from the store, where the whole
    resumed configuration fits, so a restarted control plane serves what it served before. Also
    returns the models whose knobs differ from the spec's."""
    with store.session() as session:
        applied = {name: Knobs.model_validate(v.knobs) for name, v in configs.applied(session).items()}
    resumed = {m.name: applied[m.name] for m in spec.models if m.name in applied}
    if not resumed or memory_problems(spec, {**{m.name: m.knobs for m in spec.models}, **resumed}):
        return spec, []
    changed = [n for n, k in resumed.items() if k != spec.model(n).knobs]
    models = [m.model_copy(update={"knobs": resumed.get(m.name, m.knobs)}) for m in spec.models]
    return spec.model_copy(update={"models": models}), changed


def register_fleet(
    store: Store,
    spec: FleetSpec,
    endpoints: Mapping[str, Endpoints],
    running: Mapping[str, Knobs] | None = None,
) -> None:
    """The store learns the fleet: its servers and models (an SLA a person set survives unless
    the spec's own SLA changed since), and what each model runs (`running`, the spec's knobs by
    default): a model whose applied version is not what it runs (a first start, or a start from
    the spec) gets an applied `startup` version, unless a version is pending for it: an apply a
    crash interrupted is the journal recovery's to settle (recorded applied if Triton runs it,
    else applied once), and a startup version would overtake it."""
    running = running if running is not None else {m.name: m.knobs for m in spec.models}
    servers = [
        queries.ServerInfo(s.name, endpoints[s.name].grpc, endpoints[s.name].metrics_url, not s.attached)
        for s in spec.servers
    ]
    models = [
        queries.ModelInfo(m.name, m.server, m.role, m.device)
        if m.sla is None
        else queries.ModelInfo(
            m.name, m.server, m.role, m.device, m.sla.metric, m.sla.target_ms, m.sla.window_s, m.sla.objective
        )
        for m in spec.models
    ]  # fmt: skip
    with store.session() as session:
        queries.sync_fleet(session, servers, models)
        applied, pending = configs.applied(session), configs.desired(session)
        for name, knobs in running.items():
            if name in pending:  # the reconciler's recovery decides: Triton runs it, or it is applied
                continue
            v = applied.get(name)
            if v is None or Knobs.model_validate(v.knobs) != knobs:
                why = "the spec's starting knobs" if v is None else "started from the spec's knobs"
                queries.record_applied(
                    session, name, knobs.model_dump(mode="json"), "startup", why, time.time()
                )


def fleet_lines(fleet: Fleet) -> list[str]:
    """Where each server of a running fleet answers, and its log."""
    out = []
    for s in fleet.spec.servers:
        e = fleet.endpoints(s.name)
        logp = fleet.log_path(s.name)
        out.append(
            f"  {s.name}: grpc {e.grpc}  http {e.http}  metrics {e.metrics_url}"
            + (f"  log {logp}" if logp else "")
        )
    return out


@contextmanager
def running(
    settings: Settings,
    spec: FleetSpec,
    *,
    resume: bool = True,
    api: bool = False,
    say: Say = _quiet,
) -> Iterator[System]:
    """slatune up, as a context: the store migrated, the fleet started (resumed from the store
    when `resume`), registered, the control plane's loops running and, with `api`, the REST API
    listening on the settings' address. `say` is told each step as it starts."""
    with ExitStack() as stack:
        store = Store(settings.database_url)
        stack.callback(store.dispose)
        say(f"migrating the store {store.safe_url}")
        store.upgrade()
        if resume:
            spec, changed = resume_knobs(spec, store)
            if changed:
                say(f"resuming the last applied configuration of {', '.join(changed)} from the store")
        say(f"starting fleet {spec.name!r}: {len(spec.models)} models on {len(spec.servers)} server(s)")
        began = time.monotonic()
        fleet = stack.enter_context(Fleet(spec, settings.fleet_dir))
        say(f"fleet {spec.name!r} up and serving in {time.monotonic() - began:.1f} s")
        for line in fleet_lines(fleet):
            say(line)
        endpoints = {s.name: fleet.endpoints(s.name) for s in spec.servers}
        register_fleet(store, spec, endpoints, fleet.all_knobs())
        plane = ControlPlane(settings, store, fleet)
        server: ApiServer | None = None
        if api:
            server = ApiServer(create_app(plane, settings.token()), settings.api_host, settings.api_port)
            stack.callback(server.stop)
        stack.callback(plane.stop)  # before the API stops: tuning ends with its best applied
        plane.start()
        if server is not None:
            server.start()
            gc.freeze()  # start-up's objects are kept for good: full collections need not walk them again
            # A thread waiting for the GIL (an API request behind a collector tick) waits out the
            # holder's switch interval: 5 ms by default, a fifth of the API's latency budget.
            sys.setswitchinterval(0.001)
        yield System(settings, store, fleet, plane, server)
