"""The `slatune` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import optuna
import typer
import yaml
from prometheus_client import start_http_server
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from collectors.fleet import fleet_collector
from controlplane import diagnosis, startup
from controlplane.plane import ControlPlane, ModelSummary
from controlplane.settings import Settings, get_settings
from domain.diagnosis import top_per_subject
from domain.slo import SloStatus
from domain.spec import EMBEDDED_FLEETS, FleetSpec, Knobs, Sla, SpecError, resolve_spec
from domain.stats import LoadReport, ModelStats, format_ms
from domain.windows import ModelWindow
from packing.inventory import Inventory, resolve_inventory
from packing.planner import Plan as PlanResult
from packing.planner import PlanError, fleet_spec, plan_json, server_name
from packing.planner import plan as make_plan
from runtime.fleet import Fleet, read_state
from runtime.load import LoadRun, ModelLoad, demo_mix, demo_trace, targets_for
from runtime.render import render_models, to_pbtxt, write_model
from runtime.server import ServerError
from store import configs
from store import control as control_records
from store import packing as packing_records
from store.db import Store, StoreError
from store.models import TuningRun

app = typer.Typer(
    help="slatune: run a Triton fleet, watch it, and keep its SLAs by re-tuning it live.",
    no_args_is_help=True,
    add_completion=False,
)
fleet_app = typer.Typer(help="Validate, render and run a fleet spec.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
db_app = typer.Typer(
    help="The store's schema: SQLite under the data directory by default, PostgreSQL with SLATUNE_DATABASE_URL.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    # A log (make demo > file, CI), not a screen: rich's 80 columns cut every cell of the live table.
    console.width = 140
log = logging.getLogger("slatune.cli")

SpecOpt = Annotated[
    str | None,
    typer.Option(
        "--spec", "-s", help=f"Fleet spec: a YAML path, or an embedded fleet ({', '.join(EMBEDDED_FLEETS)})."
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where repositories, logs and state live (env SLATUNE_DATA_DIR; default .slatune)."
    ),
]


STOPPING = threading.Event()
"""Set by Ctrl-C or SIGTERM (`_stop_on_signals`); the long-running commands' loops wait on it
(`_pause`). The signal also raises KeyboardInterrupt, to cut a blocking call short, but Python prints
and swallows one raised inside a finalizer or a callback: `slatune collect` beside a CPU hog, under
load, ran on past Ctrl-C that way once in a dozen stops. The event is never lost."""


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop a long-running command cleanly. SIGINT is set explicitly: a process
    started by a parent that ignores it (a test runner whose libraries did, a nohup) inherits the
    ignoring, and Python then installs no KeyboardInterrupt handler: Ctrl-C did nothing."""

    def stop(signum: int, frame: object) -> None:
        STOPPING.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _pause(seconds: float) -> None:
    """Sleep between a loop's passes; KeyboardInterrupt once a stop was asked, even where the
    signal's own KeyboardInterrupt was swallowed."""
    if STOPPING.wait(max(seconds, 0.0)):
        raise KeyboardInterrupt


@contextmanager
def failing_with(code: int, *errors: type[Exception]) -> Iterator[None]:
    """An expected error (a bad spec, no running fleet, a store not at head) is printed as it is,
    without a traceback, and the command exits with `code`."""
    try:
        yield
    except errors as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code) from None


def _spec(spec: str | None, *, check_files: bool = True) -> FleetSpec:
    with failing_with(2, SpecError):
        return resolve_spec(spec, check_files=check_files)


def _fleet_dir(data_dir: Path | None) -> Path:
    return (data_dir / "fleet") if data_dir else get_settings().fleet_dir


def _start(spec: FleetSpec, work_dir: Path) -> Fleet:
    fleet = Fleet(spec, work_dir)
    began = time.monotonic()
    with (
        console.status(
            f"starting fleet {spec.name!r}: {len(spec.models)} models on {len(spec.servers)} server(s)"
        ),
        failing_with(1, ServerError, OSError, ValueError),
    ):
        fleet.start()
    console.print(f"[green]fleet {spec.name!r} up and serving in {time.monotonic() - began:.1f} s[/green]")
    for line in startup.fleet_lines(fleet):
        console.print(line)
    return fleet


def _sla_cell(sla: Sla | None) -> str:
    return f"{'ttft' if sla.metric == 'ttft_p99' else 'p99'} <= {sla.target_ms:g} ms" if sla else "-"


def _met_cell(met: bool | None) -> str:
    return "-" if met is None else ("[green]yes[/green]" if met else "[red]NO[/red]")


def _slo_cell(slo: SloStatus | None) -> str:
    """The fraction of requests within target over the SLA's rolling window, red below its objective."""
    if slo is None or slo.attainment is None:
        return "-"
    return f"[{'green' if slo.attainment >= slo.objective else 'red'}]{slo.attainment:.1%}[/]"


def _knobs_cell(k: Knobs) -> str:
    """delay us / instances / priority / resources, then what differs from the defaults: compute
    priority, batch sizes, queue cap and timeout."""
    res = ",".join(f"{r}:{c}" for r, c in k.resources.items()) or "-"
    extra = [f"compute {k.compute_priority}"] if k.compute_priority != "default" else []
    extra += [f"preferred {list(k.preferred_batch_sizes)}"] if k.preferred_batch_sizes else []
    extra += [f"cap {k.max_queue_size}"] if k.max_queue_size else []
    extra += [f"timeout {k.queue_timeout_us // 1000} ms"] if k.queue_timeout_us else []
    return f"{k.max_queue_delay_us} / {k.instances} / {k.priority} / {res}" + "".join(f"; {e}" for e in extra)


def stats_table(
    title: str, stats: Mapping[str, ModelStats], spec: FleetSpec, knobs: Mapping[str, Knobs] | None = None
) -> Table:
    """Per model: traffic, latency against its SLA, and (when given) the knobs it runs with."""
    t = Table(title=title, title_justify="left")
    for col in ("model", "role", "req/s", "ok", "failed", "items/s", "p50 ms", "p99 ms", "SLA", "met"):
        t.add_column(col, justify="right" if col not in ("model", "role", "SLA", "met") else "left")
    if knobs:
        t.add_column("knobs (delay us / inst / prio / res)")
    for name, s in stats.items():
        m = spec.model(name)
        ttft = s.ttft_p50_ms is not None
        p50 = s.ttft_p50_ms if ttft else s.latency_p50_ms
        p99 = s.ttft_p99_ms if ttft else s.latency_p99_ms
        failed = ", ".join(f"{k}={v}" for k, v in s.failed.items()) or "0"
        row = [
            name,
            m.role,
            f"{s.rate:.1f}",
            str(s.ok),
            failed,
            f"{s.goodput:.1f}",
            format_ms(p50),
            format_ms(p99),
            _sla_cell(m.sla),
            _met_cell(s.sla_met),
        ]
        if knobs:
            row.append(_knobs_cell(knobs[name]))
        t.add_row(*row)
    return t


def _drive(run: LoadRun, spec: FleetSpec, fleet: Fleet | None, window_s: float = 5.0) -> LoadReport:
    _stop_on_signals()
    run.start()
    with Live(console=console, refresh_per_second=2) as live:
        try:
            while run.running:
                title = (
                    f"live, last {window_s:.0f} s  ({run.elapsed:.0f} / {run.duration_s:.0f} s)  Ctrl-C stops"
                )
                live.update(
                    stats_table(title, run.snapshot(window_s), spec, fleet.all_knobs() if fleet else None)
                )
                _pause(1.0)
        except KeyboardInterrupt:
            run.stop()
    return run.join()


def _print_report(report: LoadReport, spec: FleetSpec, json_out: Path | None) -> None:
    console.print(
        stats_table(f"whole run: {report.duration_s:.0f} s, {report.sent} requests", report.models, spec)
    )
    for reason, example in report.errors.items():
        console.print(f"  [yellow]{reason}[/yellow]: {example}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"report written to {json_out}")


@app.command()
def demo(
    spec: SpecOpt = None,
    duration: Annotated[
        float, typer.Option(help="Seconds of demo traffic (bounded).", min=1, max=3600)
    ] = 60.0,
    scale: Annotated[
        float, typer.Option(help="Multiply the chat and guard request rates.", min=0.1, max=10)
    ] = 1.0,
    data_dir: DataDirOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """Start the fleet (the embedded default unless --spec) and drive the mixed demo traffic,
    with a live per-model table: rate, p50/p99 against each SLA, and the knobs each model runs with."""
    fs = _spec(spec)
    fleet = _start(fs, _fleet_dir(data_dir))
    try:
        targets = targets_for(fs, lambda s: fleet.endpoints(s).grpc)
        loads = [ld for ld in demo_mix(scale) if ld.model in targets]
        report = _drive(
            LoadRun(loads, targets, duration_s=duration, max_requests=int(duration * 200)), fs, fleet
        )
        _print_report(report, fs, json_out)
    finally:
        with console.status("stopping the fleet"):
            fleet.stop()
    console.print("fleet stopped")


def _pairs(values: list[str], what: str) -> dict[str, float]:
    out = {}
    for v in values:
        name, sep, num = v.partition("=")
        try:
            out[name] = float(num)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"{v!r}: write MODEL=NUMBER", param_hint=what)
    return out


@app.command()
def load(
    rate: Annotated[
        list[str], typer.Option(help="Open-loop Poisson traffic, MODEL=REQUESTS_PER_S (repeatable).")
    ] = [],  # noqa: B006
    backlog: Annotated[list[str], typer.Option(help="Closed-loop backlog, MODEL=WORKERS (repeatable).")] = [],  # noqa: B006
    batch: Annotated[
        list[str], typer.Option(help="Items per request, MODEL=N (repeatable; default 1).")
    ] = [],  # noqa: B006
    demo_traffic: Annotated[
        bool, typer.Option("--demo", help="Use the default fleet's mixed demo workload.")
    ] = False,
    duration: Annotated[float, typer.Option(help="Seconds to run (bounded).", min=1, max=86400)] = 30.0,
    max_requests: Annotated[int, typer.Option(help="Stop after this many requests.", min=1)] = 100_000,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.", min=0.1)] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the arrival times and prompts.")] = 0,
    data_dir: DataDirOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
) -> None:
    """Drive traffic at a running fleet (started by `slatune fleet up` or `slatune demo`).

    Example: slatune load --rate chat-llm=3 --rate safety-guard=15 --backlog embeddings=2 --batch embeddings=8
    """
    with failing_with(1, ServerError):
        running = read_state(_fleet_dir(data_dir))
    fs = running.spec
    rates, backlogs, batches = _pairs(rate, "--rate"), _pairs(backlog, "--backlog"), _pairs(batch, "--batch")
    with failing_with(2, ValueError):
        if demo_traffic:
            loads = [ld for ld in demo_mix() if ld.model in fs.model_names]
        else:
            loads = [
                ModelLoad(
                    m,
                    rate=rates.get(m, 0.0),
                    concurrency=int(backlogs.get(m, 0)),
                    batch=int(batches.get(m, 1)),
                )
                for m in sorted(set(rates) | set(backlogs))
            ]
        if not loads:
            raise ValueError("nothing to send: give --rate and/or --backlog, or --demo")
        run = LoadRun(
            loads,
            targets_for(fs, lambda s: running.endpoints[s].grpc),
            duration_s=duration,
            max_requests=max_requests,
            request_timeout_s=timeout,
            seed=seed,
        )
    _print_report(_drive(run, fs, None), fs, json_out)


@fleet_app.command("check")
def fleet_check(spec: SpecOpt = None) -> None:
    """Validate a fleet spec and print its memory plan; exit 2 naming every bad field."""
    fs = _spec(spec)
    from domain.spec import device_memory_used

    used = device_memory_used(fs, {m.name: m.knobs for m in fs.models})
    console.print(
        f"[green]fleet spec {fs.name!r} is valid[/green]: {len(fs.models)} models, {len(fs.servers)} server(s)"
    )
    for d in fs.devices:
        console.print(
            f"  device {d.name} ({d.kind}): {used[d.name]:g} of {d.memory_gb:g} GB at the starting knobs"
        )


@fleet_app.command("render")
def fleet_render(
    out: Annotated[Path, typer.Argument(help="Folder to write one model repository per server into.")],
    spec: SpecOpt = None,
) -> None:
    """Write the model repositories (config.pbtxt per model) without starting anything. The
    sources need not exist here (render the gpu-trtllm fleet on a host without its engine)."""
    fs = _spec(spec, check_files=False)
    configs = render_models(fs, fs.models)
    for m in fs.models:
        cfg = configs[m.name]
        write_model(out / m.server, m, cfg)
        console.print(f"[bold]{out / m.server / m.name / 'config.pbtxt'}[/bold]")
        console.print(to_pbtxt(cfg), markup=False, highlight=False)


@fleet_app.command("up")
def fleet_up(spec: SpecOpt = None, data_dir: DataDirOpt = None) -> None:
    """Start the fleet and keep it running (supervised) until Ctrl-C or SIGTERM."""
    fs = _spec(spec)
    fleet = _start(fs, _fleet_dir(data_dir))
    console.print("serving; drive traffic with `slatune load --demo`; Ctrl-C stops")
    _stop_on_signals()
    try:
        while True:
            _pause(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
        console.print("fleet stopped")


def summary_table(plane: ControlPlane, title: str) -> Table:
    """Per model over the last 10 s, from the store: rate, p99 (TTFT for chat) against its SLA, knobs."""
    t = Table(title=title, title_justify="left")
    for col in (
        "model",
        "req/s",
        "items/s",
        "failed",
        "p99 ms",
        "SLA",
        "met",
        "SLO",
        "queued",
        "delay us / inst / prio / res",
        "last action",
    ):
        t.add_column(col, justify="right" if col in ("req/s", "items/s", "failed", "p99 ms") else "left")
    knobs = plane.fleet.all_knobs()
    last = _last_actions(plane)
    for s in plane.summaries(10.0).values():
        t.add_row(
            s.model, f"{s.request_rate:.1f}", f"{s.items_per_s:.1f}", f"{sum(s.failures.values()):g}",
            format_ms(s.sla_value_ms if s.sla else s.p99_ms), _sla_cell(s.sla), _met_cell(s.sla_met),
            _slo_cell(s.slo), _queue_cell(s), _knobs_cell(knobs[s.model]), last.get(s.model, "-"),
        )  # fmt: skip
    return t


def _queue_cell(s: ModelSummary) -> str:
    """Requests waiting now; in red with how long the oldest has waited at least, when the queue
    has not moved for a whole window."""
    if s.oldest_waiting_s > 0:
        return f"[red]{s.pending:g}, oldest >= {s.oldest_waiting_s:.0f} s[/red]"
    return f"{s.pending:g}"


def _last_actions(plane: ControlPlane) -> dict[str, str]:
    """Per model, the controller's newest action that changed it or was about it, with its age."""
    now = plane.clock()
    out: dict[str, str] = {}
    with plane.store.session() as session:
        for a in control_records.actions(session, 50):
            for model in [*(a.changes or {}), *([a.model] if a.model else [])]:
                if model not in out:
                    verb = a.kind if a.applied or a.mode == "on" else f"would {a.kind}"
                    out[model] = f"{verb}{' ' + a.rung if a.rung else ''} {now - a.at:.0f}s ago"
    return out


def _controller_line(plane: ControlPlane) -> str:
    c = plane.controller
    if c.mode == "off":
        return "controller: off"
    st = c.state
    line = f"controller ({c.mode}, {c.heartbeat.status()})"
    if st is not None:
        line += f": regime {st.regime or 'not yet known'}, protective level {st.level}"
        if st.candidate is not None:
            line += f", trying {st.candidate.what}"
    if c.last is not None:
        d = c.last.decision
        line += (
            f"\n  last: {d.kind}{' (advisory)' if not c.last.applied and c.mode != 'on' else ''}: {d.reason}"
        )
    return line


def _tuning_line(plane: ControlPlane, run_id: int | None) -> str:
    if run_id is None:
        return "tuning: not started"
    with plane.store.session() as session:
        run = session.get(TuningRun, run_id)
        assert run is not None
        status, best, budget, name, storage = (
            run.status,
            run.best,
            run.budget,
            run.study_name,
            run.optuna_storage,
        )
    try:
        trials = optuna.load_study(study_name=name, storage=plane.optuna_storage(storage)).trials
    except KeyError:
        trials = []
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    line = f"tuning run {run_id} ({name}): {status}, {done} of {budget} configurations measured"
    return line + (" - winner applied" if best else "")


@app.command()
def up(
    spec: SpecOpt = None,
    data_dir: DataDirOpt = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Override SLATUNE_DATABASE_URL.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address of the API (env SLATUNE_API_HOST; default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port of the API (env SLATUNE_API_PORT; default 8780).")
    ] = None,
    demo_load: Annotated[
        bool,
        typer.Option(
            "--demo-load",
            help="Drive the demo traffic trace (steady, twice the chat traffic, twice the bulk backlog, back) "
            "with the SLO controller on.",
        ),
    ] = False,
    controller: Annotated[
        str | None,
        typer.Option(
            help="The SLO controller: off, advisory (journal what it would do, change nothing) or on "
            "(env SLATUNE_CONTROLLER_MODE; default advisory, on with --demo-load).",
        ),
    ] = None,
    one_shot: Annotated[
        bool,
        typer.Option(
            "--one-shot",
            help="With --demo-load: start a one-shot tuning run after a baseline (the controller stands aside while it runs).",
        ),
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: Ctrl-C; 300 with --demo-load).", min=1),
    ] = None,
    tune_budget: Annotated[
        int, typer.Option(help="Configurations the --one-shot tuning run measures.", min=2)
    ] = 6,
    tune_window: Annotated[
        float, typer.Option(help="Seconds each demo configuration is measured.", min=2)
    ] = 10.0,
    from_spec: Annotated[
        bool,
        typer.Option(
            "--from-spec",
            help="Start from the spec's knobs, not the last configuration applied (the store's).",
        ),
    ] = False,
) -> None:
    """Run the whole system: migrate the store, start the fleet (the embedded default unless
    --spec), the collectors, the reconciler and the REST API on 127.0.0.1, until Ctrl-C.

    With --demo-load it also drives the demo traffic trace (steady, then twice the chat traffic,
    then twice the bulk backlog, then steady again) with the SLO controller on: the live table shows each
    model's SLA and rolling SLO attainment, and the controller's last action with its reason
    (GET /api/v1/controller has its journal). --one-shot starts a one-shot tuning run instead, as
    before; it is also available any time through the API (POST /api/v1/tuning). The API's docs are at /docs; every
    mutating request needs the bearer token printed below (SLATUNE_API_TOKEN, or the file under
    the data directory)."""
    overrides: dict[str, object] = {}
    for key, value in (
        ("data_dir", data_dir),
        ("database_url", database_url),
        ("api_host", host),
        ("api_port", port),
        ("controller_mode", controller or ("on" if demo_load else None)),
    ):
        if value is not None:
            overrides[key] = value
    with failing_with(2, ValueError):
        try:
            settings = Settings(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ValueError(
                "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            ) from None
    fs = _spec(spec)
    load: LoadRun | None = None
    _stop_on_signals()
    try:
        with (
            failing_with(1, StoreError, ServerError, OSError, ValueError),
            startup.running(
                settings, fs, resume=not from_spec and not demo_load, api=True, say=console.print
            ) as system,
        ):
            assert system.api is not None
            url = system.api.url
            console.print(
                f"[green]slatune is up[/green]: API {url}/api/v1  docs {url}/docs  metrics {url}/metrics"
            )
            token_from = "SLATUNE_API_TOKEN" if settings.api_token else str(settings.data_dir / "api-token")
            console.print(f"  bearer token for changes: {token_from}")
            console.print(
                f"  store {system.store.safe_url}; tuning studies {settings.optuna_url}; fleet files {settings.fleet_dir}"
            )
            try:
                if demo_load:
                    duration = duration or 300.0
                    load = LoadRun(
                        [], targets_for(fs, lambda s: system.fleet.endpoints(s).grpc),
                        duration_s=duration, max_requests=int(duration * 300), phases=demo_trace(duration, fs),
                    ).start()  # fmt: skip
                _watch(system.plane, duration, demo_load and one_shot, tune_budget, tune_window, load)
            finally:
                console.print("stopping: traffic, controller, tuning, reconciler, collectors, API, fleet")
                if load is not None:
                    load.stop()
                    load.join()
    except KeyboardInterrupt:
        pass
    console.print("slatune stopped")


def _diagnosis_lines(plane: ControlPlane, most: int = 3) -> list[str]:
    """The top finding per model or device, the most severe few (`slatune diagnose` has them all)."""
    found = diagnosis.findings(plane.store, plane.fleet.spec, plane.fleet.all_knobs(), plane.clock(), 30.0)
    top = list(top_per_subject(found).values())[:most]
    return [f"diagnosis: {f.subject}: {f.summary} -> {f.action}" for f in top]


def _view(plane: ControlPlane, title: str, run_id: int | None) -> RenderableType:
    """The live table, the controller's line and the tuning line; when the store cannot be read, a
    line that says so. The fleet keeps serving either way: nothing a view reads may stop it."""
    try:
        lines = [_controller_line(plane)] + ([_tuning_line(plane, run_id)] if run_id is not None else [])
        lines += _diagnosis_lines(plane)
        return Group(summary_table(plane, title), Text("\n".join(lines)))
    except Exception as exc:
        loops = f"collector {plane.collector.heartbeat.status() if plane.collector else 'not running'}; "
        loops += f"reconciler {plane.reconciler.heartbeat.status()}"
        return Text(
            f"{title}\nthe store cannot be read ({exc.__class__.__name__}: {str(exc)[:200]}); "
            f"the fleet keeps serving. {loops}",
            style="yellow",
        )


def _watch(
    plane: ControlPlane,
    duration: float | None,
    one_shot: bool,
    budget: int,
    window_s: float,
    load: LoadRun | None = None,
) -> None:
    """The live table until `duration` or Ctrl-C; a one-shot tuning run starts after a baseline.
    A control-plane error (the store down, say) is shown and retried, never a reason to stop: only
    the operator stops the fleet."""
    began = time.monotonic()
    baseline_s = min(window_s, 15.0)
    run_id: int | None = None
    printed = 0.0
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        while duration is None or time.monotonic() - began < duration:
            elapsed = time.monotonic() - began
            if one_shot and run_id is None and elapsed >= baseline_s:
                try:
                    run_id = plane.tuning.start(budget=budget, window_s=window_s, warmup_s=3.0, models=None)
                except Exception as exc:  # the store is down: try again on the next tick
                    log.warning("the demo's tuning run could not start yet: %s", exc)
            phase = ""
            if load is not None and load.phase_started:
                phase = f", traffic: {load.phases[len(load.phase_started) - 1].name}"
            title = (
                f"slatune up: {elapsed:.0f} s"
                + (f" of {duration:.0f} s" if duration else "")
                + phase
                + ", last 10 s; Ctrl-C stops"
            )
            view = _view(plane, title, run_id)
            if not console.is_terminal and elapsed - printed >= 10:  # a log, not a live screen
                printed = elapsed
                console.print(view)
            live.update(view)
            _pause(1.0)


def _store(database_url: str | None) -> Store:
    return Store(database_url or get_settings().database_url)


DbUrlOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Override SLATUNE_DATABASE_URL (e.g. postgresql+psycopg://...)."),
]


@app.command()
def plan(
    inventory: Annotated[
        str, typer.Argument(help="Inventory: a YAML path, or `seed` (the seed documents' five models).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the planned fleet spec (all servers) and one spec per server into this folder."
        ),
    ] = None,
    time_limit: Annotated[float, typer.Option(help="Seconds the solver may spend.", min=0.1)] = 2.0,
    learned: Annotated[
        bool,
        typer.Option(
            help="Respect the co-location rules learned live (from the store; see /api/v1/colocation-rules)."
        ),
    ] = True,
    database_url: DbUrlOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON instead of tables.")
    ] = False,
) -> None:
    """Place an inventory's models on the fewest devices (OR-Tools CP-SAT), then balance the headroom.

    Prints the placement, the devices used against the memory lower bound and against one device
    per model, each device's memory, and the reasoning: which rule forced which split. Exits 2
    naming the model and the rule when no placement exists. With --out, writes fleet specs that
    `slatune up --spec` runs: one fleet of one server per device, tuned and collected as one."""
    with failing_with(2, SpecError):
        inv = resolve_inventory(inventory)
    rules = []
    if learned:
        with failing_with(1, StoreError):
            store = _store(database_url)
            store.require_head()
            with store.session() as session:
                rules = packing_records.learned_rules(session)
    with failing_with(2, PlanError):
        result = make_plan(inv, rules, time_limit_s=time_limit)
    if json_out:
        console.print_json(json.dumps(plan_json(result)))
    else:
        _print_plan(inv, result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        written = [_write_spec(out / f"{inv.name}.yaml", fleet_spec(inv, result))]
        if len(result.devices) > 1:
            written += [
                _write_spec(out / f"{inv.name}-{server_name(d.name)}.yaml", fleet_spec(inv, result, [d]))
                for d in result.devices
            ]
        for path in written:
            console.print(f"wrote {path}")
        console.print(f"run it with: slatune up --spec {written[0]}")


def _print_plan(inv: Inventory, result: PlanResult) -> None:
    table = Table(title=f"plan for {inv.name!r}: {len(inv.models)} models")
    for col in ("model", "role", "device", "server", "instances", "GB"):
        table.add_column(col)
    for m in inv.models:
        where = result.placement[m.name]
        table.add_row(
            m.name, m.role, where, server_name(where), str(result.instances[m.name]), f"{m.reserved_gb:g}"
        )
    console.print(table)
    devices = Table(title="devices")
    for col in ("device", "class", "memory used", "headroom", "models"):
        devices.add_column(col)
    for d in result.devices:
        used = result.memory_used_gb[d.name]
        devices.add_row(
            d.name, d.pool, f"{used:g} of {d.memory_gb:g} GB", f"{d.memory_gb - used:g} GB",
            ", ".join(result.models_on(d.name)),
        )  # fmt: skip
    console.print(devices)
    proof = "optimal" if result.optimal else f"no placement uses fewer than {result.proven_bound}"
    console.print(
        f"[bold]{len(result.devices)} device(s)[/bold] ({proof}); lower bound by memory {result.lower_bound}; "
        f"one per model {result.naive}; solved in {result.solve_s:.2f} s"
    )
    console.print("why:")
    for line in result.reasons:
        console.print(f"  - {line}", markup=False, highlight=False)


def _write_spec(path: Path, spec: FleetSpec) -> Path:
    data = spec.model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head", database_url: DbUrlOpt = None) -> None:
    """Migrate the store's schema up to REVISION (default: the newest)."""
    store = _store(database_url)
    store.upgrade(revision)
    console.print(f"store {store.safe_url} at revision {store.current_revision()}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()], database_url: DbUrlOpt = None) -> None:
    """Migrate the store's schema down to REVISION (`base` drops every slatune table)."""
    store = _store(database_url)
    store.downgrade(revision)
    console.print(f"store {store.safe_url} at revision {store.current_revision() or '(empty)'}")


@db_app.command("current")
def db_current(database_url: DbUrlOpt = None) -> None:
    """Show the store's schema revision and whether it is the newest; exit 1 if not."""
    store = _store(database_url)
    with failing_with(1, StoreError):
        store.require_head()
    console.print(f"store {store.safe_url} is at the newest revision {store.current_revision()}")


@app.command()
def collect(
    data_dir: DataDirOpt = None,
    database_url: DbUrlOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between scrapes.", min=0.1)] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve slatune's own collection metrics on 127.0.0.1:PORT/metrics.")
    ] = None,
    prometheus: Annotated[
        str | None,
        typer.Option(
            help="Read the servers' counters from this Prometheus (its URL) instead of their pages "
            "(default: SLATUNE_PROMETHEUS_URL when SLATUNE_METRICS_SOURCE=prometheus)."
        ),
    ] = None,
) -> None:
    """Scrape a running fleet's servers into the store (or read them from a Prometheus that scrapes
    them), showing the newest window per model."""
    with failing_with(1, ServerError, StoreError):
        running = read_state(_fleet_dir(data_dir))
        store = _store(database_url)
        store.require_head()
    settings = get_settings()
    via = prometheus or settings.prometheus_source
    startup.register_fleet(store, running.spec, running.endpoints)
    collector = fleet_collector(
        store, running.spec, running.endpoints, interval_s=interval, retention_raw_s=settings.retention_raw_s,
        prometheus_url=via,
        prometheus_lookback_s=settings.prometheus_lookback_s,
        prometheus_server_label=settings.prometheus_server_label,
    )  # fmt: skip
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=collector.metrics.registry)
        console.print(f"slatune's own metrics: http://127.0.0.1:{metrics_port}/metrics")
    source = f"from Prometheus {via} " if via else ""
    console.print(f"collecting every {interval:g} s {source}into {store.safe_url}; Ctrl-C stops")
    began = time.monotonic()
    _stop_on_signals()
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while duration is None or time.monotonic() - began < duration:
                tick_began = time.monotonic()
                result = collector.tick()
                if result.windows:
                    live.update(windows_table(result.windows, result.failed))
                _pause(interval - (time.monotonic() - tick_began))
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()


@app.command()
def diagnose(
    data_dir: DataDirOpt = None,
    database_url: DbUrlOpt = None,
    seconds: Annotated[float, typer.Option(help="Read the windows of the last SECONDS.", min=1)] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """What an expert would say of the running fleet's recent windows, each finding with its
    evidence and the action that follows: too few instances (queue time high while the device has
    headroom), a mistuned batching window (batches of one under load, or a queue delay with full
    batches), interference (a latency-critical model's compute rising with the bulk work beside
    it), an idle or nearly empty device (a packing opportunity). Reads the store the running
    fleet's collectors write (`slatune up`, or `slatune collect`)."""
    with failing_with(1, ServerError, StoreError):
        running = read_state(_fleet_dir(data_dir))
        store = _store(database_url)
        store.require_head()
        with store.session() as session:
            applied = {name: Knobs.model_validate(v.knobs) for name, v in configs.applied(session).items()}
    knobs = {m.name: applied.get(m.name, m.knobs) for m in running.spec.models}
    found = diagnosis.findings(store, running.spec, knobs, time.time(), seconds)
    if json_out:
        console.print_json(
            json.dumps([{**vars(f), "evidence": dict(f.evidence)} for f in found]), default=str
        )
        return
    if not found:
        console.print(f"[green]nothing to say over the last {seconds:g} s[/green]: no rule fired")
    for f in found:
        console.print(f"[bold]{f.subject}[/bold] ({f.kind}): {f.summary}", highlight=False)
        console.print(f"  -> {f.action}", markup=False, highlight=False)


def windows_table(windows: list[ModelWindow], failed: Mapping[str, str]) -> Table:
    t = Table(
        title="newest windows" + (f"  (failed: {dict(failed)})" if failed else ""), title_justify="left"
    )
    for col in (
        "model",
        "req/s",
        "items/s",
        "batch",
        "queue ms",
        "infer ms",
        "p99 ms",
        "ttft p99 ms",
        "failures",
    ):
        t.add_column(col, justify="left" if col in ("model", "failures") else "right")
    for w in sorted(windows, key=lambda w: w.model):
        t.add_row(
            w.model, f"{w.request_rate:.1f}", f"{w.inference_rate:.1f}", format_ms(w.avg_batch),
            format_ms(w.avg_queue_ms), format_ms(w.avg_compute_infer_ms), format_ms(w.p99_ms),
            format_ms(w.ttft_p99_ms), ", ".join(f"{k}={v:g}" for k, v in w.failures.items()) or "0",
        )  # fmt: skip
    return t


# -------------------------------------------------- dashboards and Prometheus (dashboards/, issue 11)
dashboards_app = typer.Typer(
    help="slatune's Grafana dashboards (built in dashboards/).", no_args_is_help=True
)
app.add_typer(dashboards_app, name="dashboards")
prometheus_app = typer.Typer(
    help="Prometheus and Alertmanager for the fleet and slatune.", no_args_is_help=True
)
app.add_typer(prometheus_app, name="prometheus")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana's URL, e.g. http://127.0.0.1:3000.")],
    token: Annotated[
        str, typer.Option(envvar="GRAFANA_TOKEN", help="A service account token (env GRAFANA_TOKEN).")
    ],
    prometheus_url: Annotated[
        str, typer.Option(help="The URL Grafana reaches Prometheus at (the datasource's).")
    ] = "http://127.0.0.1:9090",
) -> None:
    """Create or update the slatune folder, its Prometheus datasource and the dashboards, each by
    uid; what is already there as slatune would write it is left alone (pushing twice changes nothing)."""
    from grafana_client.client import GrafanaException

    from dashboards.build import render
    from dashboards.push import connect, push

    with failing_with(1, GrafanaException):
        result = push(connect(url, token), prometheus_url, render())
    for verb, items in (
        ("created", result.created),
        ("updated", result.updated),
        ("unchanged", result.unchanged),
    ):
        for item in items:
            console.print(f"{verb}: {item}")
    console.print(
        "no change" if not result.changed else f"{len(result.created) + len(result.updated)} change(s)"
    )


@prometheus_app.command("config")
def prometheus_config(
    out: Annotated[
        Path, typer.Option("--out", help="Where to write prometheus.yml, the rules and alertmanager.yml.")
    ],
    spec: SpecOpt = None,
    data_dir: DataDirOpt = None,
    slatune_url: Annotated[
        str | None,
        typer.Option(help="slatune's API as Prometheus and Alertmanager reach it (default: the settings')."),
    ] = None,
    alertmanager: Annotated[
        str | None, typer.Option(help="host:port of the Alertmanager Prometheus sends to.")
    ] = None,
    scrape_interval: Annotated[str, typer.Option(help="Prometheus's scrape interval.")] = "15s",
    evaluation_interval: Annotated[str, typer.Option(help="Prometheus's rule evaluation interval.")] = "15s",
) -> None:
    """Write a Prometheus configuration scraping every server of the running fleet (or of --spec, when
    its servers' metrics ports or URLs are in it) and slatune's /metrics, slatune's rules, and an
    Alertmanager route to slatune's webhook with the API's bearer token (read from a file)."""
    from dashboards import prometheus as promcfg

    settings = Settings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    with failing_with(2, ValueError, ServerError):
        if spec is not None:
            fs, running = _spec(spec, check_files=False), None
        else:
            state = read_state(settings.fleet_dir)
            fs, running = state.spec, {n: e.metrics_url for n, e in state.endpoints.items()}
        servers = promcfg.metrics_urls(fs, running)
    from_env = settings.api_token is not None and bool(settings.api_token.get_secret_value())
    token = settings.token()  # generated into the data directory once, where none is set
    written = promcfg.write(
        out, servers, slatune_url or f"http://{settings.api_host}:{settings.api_port}",
        token=token, token_file=None if from_env else (settings.data_dir / "api-token").resolve(),
        alertmanager=alertmanager, scrape_interval=scrape_interval, evaluation_interval=evaluation_interval,
    )  # fmt: skip
    console.print(f"scraping {len(servers)} server(s): {', '.join(sorted(servers))}, and slatune")
    for path in (written.prometheus, written.rules, written.alertmanager):
        console.print(f"wrote {path}")
    console.print(f"Alertmanager reads the webhook's token from {written.token_file}")


# ---- slatune report (issue 11: a figure a person can look at without Grafana) ----


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="The PNG to write.")],
    database_url: DbUrlOpt = None,
    since: Annotated[
        float | None,
        typer.Option(help="Show the last SECONDS (default: the --run's span, else the last hour).", min=1),
    ] = None,
    run: Annotated[
        int | None, typer.Option("--run", help="The tuning run whose trials to show (default: the newest).")
    ] = None,
) -> None:
    """Render from the store: p99 against SLA over time with reconfigurations and controller
    actions marked, bulk goodput, knobs over time, and a tuning run's trials."""
    from controlplane import report as rep

    store = _store(database_url)
    with failing_with(1, StoreError):
        store.require_head()
    now = time.time()
    with failing_with(2, ValueError), store.session() as session:
        if since is None and run is not None:
            begin, end = rep.run_span(session, run)
        else:
            begin, end = now - (since or 3600.0), now
        data = rep.gather(session, begin, end, run)
    rep.render(data, out)
    windows = sum(len(s.t) for s in [*data.latency.values(), *data.goodput.values()])
    console.print(
        f"wrote {out}: {windows} windows, {len(data.reconfigurations)} reconfigurations, "
        f"{len(data.actions)} controller actions, {len(data.trials)} trials"
        + (f" of tuning run {data.run_id}" if data.run_id is not None else "")
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    app()


if __name__ == "__main__":
    main()
