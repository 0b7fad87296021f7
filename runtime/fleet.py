"""The running fleet: servers started (or attached to) from a spec, supervised, and reconfigured live.

`runtime/` is the only package that talks to Triton. Callers state the knobs a model should run
with; `Fleet.apply` validates them, changes the running model through the model-repository API,
reads the result back from Triton and keeps the on-disk repository in step, so a server that dies
is restarted (by `runtime/supervisor.py`) with its last applied configuration.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tritonclient.grpc as grpcclient
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from domain.spec import FleetSpec, Knobs, ServerSpec, knob_problems, memory_problems
from runtime import render
from runtime.render import ModelConfig
from runtime.server import (
    ALLOCATOR,
    Endpoints,
    Ports,
    ServerError,
    TritonProcess,
    find_tritonserver,
    free_ports,
    python_backend_dir,
    server_environment,
)
from runtime.supervisor import Supervisor

log = logging.getLogger("slatune.runtime.fleet")
ApplyPath = Literal["unchanged", "in-place", "reload"]
STATE_FILE = "fleet.json"


class ReconfigurationError(RuntimeError):
    """A reconfiguration was refused or failed; the model keeps its previous configuration.

    `temporary` is set when the server could not be reached (down, restarting, overloaded): the
    same change may succeed if tried again. Anything else (a bad knob, a config Triton refuses)
    fails the same way every time."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


# gRPC statuses that say nothing about the configuration itself, only that the server did not answer.
_TEMPORARY_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")
_UNAVAILABLE = "StatusCode.UNAVAILABLE"
_DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"

# Every call to Triton has a deadline, so a server that hangs (SIGSTOP, a wedged backend) costs
# its caller seconds, not forever. A read (readiness, a model's config) answers in about 5 ms, also
# while the model reloads (measured on the small fleet: 82 reads during 3 reloads, the slowest
# 6 ms): 5 s is far beyond any healthy answer. A load with warmup takes 1.4 to 2.4 s, its p99
# 3.1 s under the reconfiguration benchmark's mixed load (docs/triton.md,
# docs/benchmarks/reconfigure-*.json): 15 s leaves room for a busy 2-core machine, and stays well
# under the reconciler's stuck threshold (60 s). A deadline that expires is a temporary error; a
# load whose deadline expired may still finish in Triton, so the next read adopts what it finds.
READ_DEADLINE_S = 5.0
LOAD_DEADLINE_S = 15.0


@dataclass(frozen=True)
class ApplyResult:
    model: str
    before: Knobs
    after: Knobs
    path: ApplyPath
    seconds: float


@dataclass
class _Server:
    spec: ServerSpec
    endpoints: Endpoints
    process: TritonProcess | None  # None for a server slatune attached to


class Fleet:
    """Start with `with Fleet(spec, work_dir) as fleet:` or `start()` / `stop()`."""

    def __init__(
        self,
        spec: FleetSpec,
        work_dir: Path,
        *,
        supervise: bool = True,
        warmup: bool = True,
        read_deadline_s: float = READ_DEADLINE_S,
        load_deadline_s: float = LOAD_DEADLINE_S,
        allocator: str | None = ALLOCATOR,
    ) -> None:
        """`warmup=False` drops the models' warmup samples: only the benchmark that shows what
        they prevent switches them off. The deadlines bound every call to Triton (see
        READ_DEADLINE_S): models that take minutes to load (a large LLM) need a longer load one.
        `allocator=None` runs the servers on glibc's malloc: only the benchmark that shows what
        jemalloc prevents (`benchmarks.soak`) does that."""
        self.spec = spec
        self.work_dir = Path(work_dir)
        self.supervise = supervise
        self.warmup = warmup
        self.read_deadline_s = read_deadline_s
        self.load_deadline_s = load_deadline_s
        self.allocator = allocator
        self._servers: dict[str, _Server] = {}
        self._applied: dict[str, ModelConfig] = {}
        # One reconfiguration per server at a time: concurrent reloads would stack their start-up
        # CPU bursts on the instances that are serving. The supervisor's restarts take it too.
        self._locks = {s.name: threading.Lock() for s in spec.servers}
        self._supervisor: Supervisor | None = None
        self._readers: dict[str, grpcclient.InferenceServerClient] = {}
        self._readers_lock = threading.Lock()
        # Configs whose load's deadline expired: Triton may still finish the load, and the first
        # read that finds it running adopts it (the record and the on-disk repository follow).
        self._unsettled: dict[str, ModelConfig] = {}

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 120.0) -> dict[str, float]:
        """Render every model repository, start or attach to every server, and wait until all
        models are ready. Returns the seconds each server took. On failure nothing is left running."""
        timings: dict[str, float] = {}
        try:
            managed = [s for s in self.spec.servers if not s.attached]
            if managed:
                binary = find_tritonserver(self.spec.tritonserver)
                backends = python_backend_dir(self.work_dir)
                env = server_environment(allocator=self.allocator)
            for s in self.spec.servers:
                began = time.monotonic()
                if s.attached:
                    self._attach(s)
                else:
                    self._start_managed(s, binary, backends, env, timeout)
                timings[s.name] = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        self._write_state()
        processes = {name: s.process for name, s in self._servers.items() if s.process is not None}
        # A restarted server gets a fresh channel: the cached one may sit out gRPC's reconnect
        # backoff (seconds) after the server is back.
        self._supervisor = Supervisor(processes, self._locks, on_restart=self._forget_reader)
        if self.supervise and processes:
            self._supervisor.start()
        return timings

    def _start_managed(
        self, s: ServerSpec, binary: Path, backends: Path, env: dict[str, str], timeout: float
    ) -> None:
        repo = self.work_dir / "repositories" / s.name
        if repo.exists():
            shutil.rmtree(repo)
        repo.mkdir(parents=True)
        configs = render.render_models(self.spec, self.spec.models_on(s.name), warmup=self.warmup)
        for m in self.spec.models_on(s.name):
            render.write_model(repo, m, configs[m.name])
            self._applied[m.name] = configs[m.name]
        picked = iter(free_ports(3))
        ports = Ports(
            http=s.http_port or next(picked),
            grpc=s.grpc_port or next(picked),
            metrics=s.metrics_port or next(picked),
        )
        process = TritonProcess(
            s.name,
            binary,
            repo,
            backends,
            self.work_dir / "logs" / f"{s.name}.log",
            ports,
            s.rate_limit_resources,
            env,
            trace_dir=self.work_dir / "traces" / s.name,
            cores=self.spec.server_cores(s.name),
        )
        self._servers[s.name] = _Server(s, process.endpoints, process)
        process.start(timeout)

    def _attach(self, s: ServerSpec) -> None:
        assert s.http_url and s.grpc_url and s.metrics_url
        endpoints = Endpoints(_hostport(s.http_url), _hostport(s.grpc_url), s.metrics_url)
        self._servers[s.name] = _Server(s, endpoints, None)
        with self._client(s.name) as client:
            try:
                if not client.is_server_ready(client_timeout=self.read_deadline_s):
                    raise ServerError(f"server {s.name!r} at {s.grpc_url} is not ready")
                for m in self.spec.models_on(s.name):
                    if not client.is_model_ready(m.name, client_timeout=self.read_deadline_s):
                        raise ServerError(
                            f"model {m.name!r} is not loaded on server {s.name!r} ({s.grpc_url}); "
                            "load it there, or drop it from the spec"
                        )
                    self._applied[m.name] = self._observed(client, m.name)
            except InferenceServerException as exc:
                raise ServerError(
                    f"server {s.name!r} at {s.grpc_url} cannot be reached: {exc.message()}"
                ) from None

    def stop(self) -> None:
        with self._readers_lock:
            for client in self._readers.values():
                client.close()
            self._readers.clear()
        if self._supervisor is not None:
            self._supervisor.stop()
        for server in self._servers.values():
            if server.process is not None:
                server.process.stop()
        self.state_path.unlink(missing_ok=True)

    @property
    def state_path(self) -> Path:
        return self.work_dir / STATE_FILE

    def _write_state(self) -> None:
        """Tell other slatune commands (`slatune load`) where this running fleet answers."""
        state = {
            "pid": os.getpid(),
            "spec": self.spec.model_dump(mode="json"),
            "servers": {name: vars(s.endpoints) for name, s in self._servers.items()},
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=2))

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- reading
    def endpoints(self, server: str) -> Endpoints:
        return self._servers[server].endpoints

    def model_endpoints(self, model: str) -> Endpoints:
        return self.endpoints(self.spec.model(model).server)

    def restarts(self, server: str) -> int:
        """How many times the supervisor restarted `server` since `start()`."""
        if server not in self._servers:
            raise KeyError(server)
        return 0 if self._supervisor is None else self._supervisor.restarts(server)

    def pid(self, server: str) -> int | None:
        """The managed server's tritonserver process id (None when attached or not running)."""
        proc = self._servers[server].process
        return proc.proc.pid if proc is not None and proc.proc is not None else None

    def log_path(self, server: str) -> Path | None:
        proc = self._servers[server].process
        return None if proc is None else proc.log_path

    def knobs(self, model: str) -> Knobs:
        """The knobs last applied to `model` (as slatune applied them and Triton confirmed)."""
        self.spec.model(model)
        return render.knobs_of(self._applied[model])

    def all_knobs(self) -> dict[str, Knobs]:
        return {name: render.knobs_of(cfg) for name, cfg in self._applied.items()}

    def applied_config(self, model: str) -> ModelConfig:
        return self._applied[model]

    def observed_config(self, model: str) -> ModelConfig:
        """The model's configuration as the running Triton reports it (over one gRPC channel per
        server, kept open: opening one costs more than the call). A server that is unavailable
        loses its channel, so the next read dials anew rather than wait out gRPC's reconnect
        backoff."""
        server = self.spec.model(model).server
        with self._readers_lock:
            client = self._readers.get(server)
            if client is None:
                client = self._readers[server] = grpcclient.InferenceServerClient(
                    self._servers[server].endpoints.grpc
                )
        try:
            observed = self._observed(client, model)
        except InferenceServerException as exc:
            if exc.status() == _UNAVAILABLE:
                self._forget_reader(server, client)
            raise
        self._adopt_if_loaded(model, observed)
        return observed

    def observed_knobs(self, model: str) -> Knobs:
        """The knobs the running Triton reports for `model`: what a reconciler compares with."""
        try:
            return render.knobs_of(self.observed_config(model))
        except InferenceServerException as exc:
            raise ReconfigurationError(
                f"{model}: its configuration cannot be read from its server: {exc.message()}", temporary=True
            ) from None

    def _observed(self, client: grpcclient.InferenceServerClient, model: str) -> ModelConfig:
        reply: Any = client.get_model_config(model, as_json=True, client_timeout=self.read_deadline_s)
        return render.from_json(reply["config"])

    def _forget_reader(self, server: str, client: grpcclient.InferenceServerClient | None = None) -> None:
        """Close `server`'s cached channel (only if it is still `client`, when given)."""
        with self._readers_lock:
            cached = self._readers.get(server)
            if cached is None or (client is not None and cached is not client):
                return
            del self._readers[server]
        cached.close()

    def _adopt_if_loaded(self, model: str, observed: ModelConfig) -> None:
        """A load whose deadline expired and that Triton finished anyway is the applied config."""
        pending = self._unsettled.get(model)
        if pending is None or render.knobs_of(observed) != render.knobs_of(pending):
            return
        lock = self._locks[self.spec.model(model).server]
        if not lock.acquire(blocking=False):
            return  # an apply or a restart is under way: a later read adopts it
        try:
            if self._unsettled.get(model) is pending:
                del self._unsettled[model]
                self._record_applied(model, pending)
        finally:
            lock.release()

    def _record_applied(self, model: str, config: ModelConfig) -> None:
        self._applied[model] = config
        server = self._servers[self.spec.model(model).server]
        if server.process is not None:
            render.write_config(server.process.repository, config)

    @contextmanager
    def _client(self, server: str) -> Iterator[grpcclient.InferenceServerClient]:
        client = grpcclient.InferenceServerClient(self._servers[server].endpoints.grpc)
        try:
            yield client
        finally:
            client.close()

    # ----------------------------------------------------------------- reconfiguration
    def validate(self, model: str, changes: dict[str, Any]) -> Knobs:
        """The knobs `model` would run with after `changes`, or ReconfigurationError naming the
        bad field. Checks types and ranges, rate-limiter resources and the device memory budget."""
        spec = self.spec.model(model)
        current = self.knobs(model)
        ensemble = spec.source.ensemble is not None or self._applied[model].platform == "ensemble"
        if ensemble and changes and current.with_values(changes) != current:
            raise ReconfigurationError(f"{model}: an ensemble has no knobs of its own; tune its steps")
        unknown = sorted(set(changes) - set(Knobs.model_fields))
        if unknown:
            raise ReconfigurationError(
                f"{model}: unknown knob(s) {', '.join(unknown)} (knobs: {', '.join(Knobs.model_fields)})"
            )
        try:
            knobs = Knobs.model_validate({**current.model_dump(), **changes}).resolved(current)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ReconfigurationError(f"{model}: {why}") from None
        # The spec's own rules, the ones every proposal is checked with before it is recorded.
        problems = knob_problems(self.spec.server(spec.server), knobs)
        memory = memory_problems(self.spec, {**self.all_knobs(), model: knobs})
        problems += [("knobs.instances", why) for why in memory]
        if problems:
            raise ReconfigurationError(f"{model}: " + "; ".join(f"{path}: {why}" for path, why in problems))
        return knobs

    def apply(self, model: str, knobs: Knobs | None = None, **changes: Any) -> ApplyResult:
        """Run `model` with `knobs` (or its current knobs with `changes`), live.

        A change of the instance group alone (count, priority, resources) goes through Triton's
        in-place path: instances are added or replaced while the others keep serving. Any other
        change reloads the model: Triton loads the new version beside the serving one and switches
        when it is ready. Either way new instances run the config's warmup samples before they
        take traffic (a cold first batch holds the queue past short queue timeouts), and one
        reconfiguration per server runs at a time, so start-up bursts do not stack. The result is
        read back from Triton before it counts as applied. Applying what is applied does nothing."""
        if knobs is not None:
            changes = {**knobs.model_dump(), **changes}
        spec = self.spec.model(model)
        began = time.monotonic()
        # Held by another apply or by the supervisor restarting the server: wait a load's deadline.
        if not self._locks[spec.server].acquire(timeout=self.load_deadline_s):
            raise ReconfigurationError(
                f"{model}: server {spec.server!r} is busy (restarting or reconfiguring) after "
                f"{self.load_deadline_s:g} s",
                temporary=True,
            )
        try:
            target = self.validate(model, changes)
            before_cfg = self._applied[model]
            before = render.knobs_of(before_cfg)
            new_cfg = ModelConfig()
            new_cfg.CopyFrom(before_cfg)
            render.set_knobs(new_cfg, target, self.spec.device(spec.device), spec.backend)
            if new_cfg == before_cfg:
                return ApplyResult(model, before, before, "unchanged", time.monotonic() - began)
            path: ApplyPath = "in-place" if render.instance_groups_only(before_cfg, new_cfg) else "reload"
            self._unsettled.pop(model, None)  # this load decides, whatever an older one did
            with self._client(spec.server) as client:
                try:
                    client.load_model(
                        model, config=render.to_json(new_cfg), client_timeout=self.load_deadline_s
                    )
                    observed = self._observed(client, model)
                except InferenceServerException as exc:
                    if exc.status() == _UNAVAILABLE:
                        self._forget_reader(spec.server)
                    if exc.status() == _DEADLINE_EXCEEDED:
                        # Triton may still finish this load: the next read that finds it adopts it.
                        self._unsettled[model] = new_cfg
                        raise ReconfigurationError(
                            f"{model}: server {spec.server!r} did not answer within its deadline "
                            f"({self.load_deadline_s:g} s to load, {self.read_deadline_s:g} s to read back); "
                            "Triton may still finish the load: the next attempt reads back what runs",
                            temporary=True,
                        ) from None
                    if exc.status() in _TEMPORARY_STATUSES:
                        raise ReconfigurationError(
                            f"{model}: server {spec.server!r} did not answer: {exc.message()}", temporary=True
                        ) from None
                    raise ReconfigurationError(
                        f"{model}: Triton refused the new configuration, the previous one stays: {exc.message()}"
                    ) from None
            if render.knobs_of(observed) != target:
                raise ReconfigurationError(
                    f"{model}: Triton reports {render.knobs_of(observed)} after applying {target}"
                )
            self._record_applied(model, new_cfg)
            return ApplyResult(model, before, target, path, time.monotonic() - began)
        finally:
            self._locks[spec.server].release()

    # ----------------------------------------------------------------- placement
    def move(self, model: str, server: str, device: str, *, overlap_s: float = 0.0) -> MoveResult:
        """Move `model` to `server` and `device` on the running fleet, one step at a time and never
        below the capacity it had: load it on the target (at the knobs it runs with, warmed up),
        serve it on both for `overlap_s` seconds, then unload it from the source.

        Triton has no router between servers: a client addresses one server. While both serve, a
        client (or the load balancer in front, which health-checks `/v2/models/<model>/ready`) must
        switch to the target; a request sent to the source after the unload fails as an unknown
        model. `overlap_s` is the time given to switch. The fleet's state file names the new server
        as soon as the target serves. Both servers must be ones slatune started; a step of an
        ensemble moves with its ensemble, not alone."""
        began = time.monotonic()
        spec_m = self.spec.model(model)
        source = spec_m.server
        if (source, spec_m.device) == (server, device):
            raise ReconfigurationError(f"{model}: already on server {server!r}, device {device!r}")
        if server not in self._servers:
            raise ReconfigurationError(
                f"{model}: unknown server {server!r} (have: {', '.join(self._servers)})"
            )
        if any(self._servers[s].process is None for s in (source, server)):
            raise ReconfigurationError(f"{model}: slatune moves models only between servers it started")
        if spec_m.source.ensemble is not None or any(
            m.source.ensemble and any(st.model == model for st in m.source.ensemble.steps)
            for m in self.spec.models
        ):
            raise ReconfigurationError(
                f"{model}: an ensemble and its steps run on one server; move them together"
            )
        knobs = self.knobs(model)
        moved = [
            m.model_copy(update={"server": server, "device": device}) if m.name == model else m
            for m in self.spec.models
        ]
        try:
            new_spec = FleetSpec.model_validate(
                {**self.spec.model_dump(), "models": [m.model_dump() for m in moved]}
            )
        except ValidationError as exc:
            raise ReconfigurationError(f"{model}: {exc.errors()[0]['msg']}") from None
        placed = new_spec.model(model)
        problems = [why for _, why in new_spec.problems()]
        problems += memory_problems(new_spec, {**self.all_knobs(), model: knobs})
        if new_spec.server_cores(server) != self.spec.server_cores(server):
            problems.append(
                f"server {server!r} runs pinned to cores {self.spec.server_cores(server)}; device {device!r} "
                f"would need {new_spec.server_cores(server)}: start the fleet with the new placement instead"
            )
        if problems:
            raise ReconfigurationError(f"{model}: cannot move to {server}/{device}: " + "; ".join(problems))
        locks = [self._locks[name] for name in sorted({source, server})]
        for lock in locks:
            if not lock.acquire(timeout=self.load_deadline_s):
                for held in locks[: locks.index(lock)]:
                    held.release()
                raise ReconfigurationError(
                    f"{model}: a server is busy (restarting or reconfiguring)", temporary=True
                )
        try:
            config = render.render(placed, knobs, new_spec.device(device), warmup=self.warmup)
            target = self._servers[server]
            assert target.process is not None
            render.write_model(target.process.repository, placed, config)
            with self._client(server) as client:
                try:
                    client.load_model(
                        model, config=render.to_json(config), client_timeout=self.load_deadline_s
                    )
                    self._observed(client, model)
                except InferenceServerException as exc:
                    shutil.rmtree(target.process.repository / model, ignore_errors=True)
                    raise ReconfigurationError(
                        f"{model}: {server!r} did not load it, it stays on {source!r}: {exc.message()}",
                        temporary=exc.status() in _TEMPORARY_STATUSES,
                    ) from None
            serving = time.monotonic()
            self.spec = new_spec
            self._applied[model] = config
            self._write_state()
            if overlap_s > 0:
                time.sleep(overlap_s)
            src = self._servers[source]
            assert src.process is not None
            shutil.rmtree(
                src.process.repository / model, ignore_errors=True
            )  # a restart must not bring it back
            with self._client(source) as client:
                try:
                    client.unload_model(model, client_timeout=self.load_deadline_s)
                except InferenceServerException as exc:
                    log.warning(
                        "%s: unloading it from %s failed (%s); it stays loaded there",
                        model,
                        source,
                        exc.message(),
                    )
            return MoveResult(model, source, server, spec_m.device, device, time.monotonic() - serving,
                              time.monotonic() - began)  # fmt: skip
        finally:
            for lock in locks:
                lock.release()


@dataclass(frozen=True)
class MoveResult:
    model: str
    from_server: str
    to_server: str
    from_device: str
    to_device: str
    both_serving_s: float
    """How long both servers served the model (the clients' time to switch)."""
    seconds: float


def _hostport(url: str) -> str:
    """`http://host:port/...` or `host:port` -> `host:port` (what tritonclient takes)."""
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


@dataclass(frozen=True)
class RunningFleet:
    """What a running fleet wrote about itself: its spec and each server's endpoints."""

    spec: FleetSpec
    endpoints: dict[str, Endpoints]
    pid: int


def read_state(work_dir: Path) -> RunningFleet:
    path = Path(work_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServerError(
            f"no running fleet in {work_dir} (no {STATE_FILE}); start one with `slatune fleet up`"
        ) from None
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        raise ServerError(
            f"the fleet in {work_dir} is not running (process {state['pid']} is gone)"
        ) from None
    return RunningFleet(
        FleetSpec.model_validate(state["spec"]),
        {name: Endpoints(**e) for name, e in state["servers"].items()},
        int(state["pid"]),
    )
