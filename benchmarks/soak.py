"""Benchmark: the server under a storm of traced requests, on glibc's malloc and on jemalloc.

tritonserver 2.51's trace API unlocks the mutex of a `Trace` it has just freed (docs/triton.md,
Server). slatune traces every request, so the allocator the server runs on decides whether that
late unlock is harmless (`runtime.server.ALLOCATOR`). This drives the default fleet about ten times
as hard as the shift benchmark, in traced requests per second: the guard from 6 closed-loop
clients, the embedder from 2 one-item clients, chat at 3 requests/s. It runs for `--minutes` on
each allocator and counts what the server did:

- deaths: the supervisor's restarts, each with its exit status, or "hung" for a server alive whose
  liveness endpoint was silent for `runtime.supervisor.HANG_S` (the supervisor restarts both);
- what the server's log said as it went (glibc's heap checks, assertions, signals other than the
  SIGTERM of the stop);
- the clients' failed requests, by reason.

    python -m benchmarks.soak                       # glibc, then jemalloc: 10 minutes each
    python -m benchmarks.soak --allocator jemalloc --minutes 16

Figures go to docs/benchmarks/soak.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks import report
from domain.spec import resolve_spec
from runtime.fleet import Fleet
from runtime.load import LoadRun, ModelLoad, targets_for
from runtime.server import ALLOCATOR

app = typer.Typer(add_completion=False)
OUT = Path("docs/benchmarks/soak.json")
ALLOCATORS: dict[str, str | None] = {"glibc": None, "jemalloc": ALLOCATOR}
LOADS = (
    ModelLoad("safety-guard", concurrency=6, words=(4, 8)),
    ModelLoad("embeddings", concurrency=2, batch=1, words=(4, 8)),
    ModelLoad("chat-llm", rate=3.0, words=(16, 64), max_tokens=4),
)
POLL_S = 5.0
SAID = re.compile(r"malloc|free\(\)|Assertion|corrupt|Signal \((?!15\))")
"""What a server's log says when its heap or its locks broke (not the SIGTERM that stops it)."""


class _Exits(logging.Handler):
    """Why the supervisor restarted a server: an exit status, or "hung"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.statuses: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if m := re.search(r"exited \(status (-?\d+)\)", message):
            self.statuses.append(m.group(1))
        elif ": hung;" in message:
            self.statuses.append("hung")


def clear_traces(folder: Path) -> None:
    """The trace files (one per request) the collector would read and delete; none runs here."""
    for path in folder.rglob("trace.json*"):
        path.unlink(missing_ok=True)


def soak(name: str, minutes: float, seed: int) -> dict[str, Any]:
    spec = resolve_spec(None)
    server = spec.servers[0].name
    exits = _Exits()
    logging.getLogger("slatune.runtime").addHandler(exits)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="slatune-soak-") as tmp,
            Fleet(spec, Path(tmp), allocator=ALLOCATORS[name]) as fleet,
        ):
            pid = fleet.pid(server)
            mapped = pid is not None and "libjemalloc" in Path(f"/proc/{pid}/maps").read_text()
            targets = targets_for(spec, lambda s: fleet.endpoints(s).grpc)
            run = LoadRun(
                LOADS,
                targets,
                duration_s=minutes * 60,
                max_requests=5_000_000,
                request_timeout_s=10.0,
                seed=seed,
            ).start()
            began, done = time.monotonic(), 0
            while run.running:
                time.sleep(POLL_S)
                clear_traces(Path(tmp) / "traces")
                n = len(run.records)
                print(
                    f"  {name}: {time.monotonic() - began:4.0f} s, {n:,} requests ({(n - done) / POLL_S:.0f}/s), "
                    f"{fleet.restarts(server)} deaths ({', '.join(exits.statuses) or 'none'})",
                    flush=True,
                )
                done = n
            run.join()
            deaths = fleet.restarts(server)
            log_path = fleet.log_path(server)
            said = (
                [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if SAID.search(ln)]
                if log_path
                else []
            )
    finally:
        logging.getLogger("slatune.runtime").removeHandler(exits)
    failed = Counter(r.error for r in run.records if r.error)
    requests = len(run.records)
    return {
        "jemalloc_mapped": mapped,
        "minutes": minutes,
        "requests": requests,
        "requests_per_s": round(requests / (minutes * 60), 1),
        "deaths": deaths,
        "exit_statuses": exits.statuses,
        "server_log_said": said[:20],
        "failed_requests": dict(failed),
    }


@app.command()
def main(
    allocator: Annotated[
        list[str], typer.Option(help="Run on these allocators, in this order: glibc, jemalloc.")
    ] = [  # noqa: B006
        "glibc",
        "jemalloc",
    ],
    minutes: Annotated[
        float, typer.Option(min=0.5, max=120, help="How long each allocator's run lasts.")
    ] = 10.0,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="Where the figures go.")] = OUT,
) -> None:
    """Drive the default fleet with traced requests on each allocator and count the server's deaths."""
    unknown = [a for a in allocator if a not in ALLOCATORS]
    if unknown:
        raise typer.BadParameter(
            f"unknown allocator(s) {', '.join(unknown)} (have: glibc, jemalloc)", param_hint="--allocator"
        )
    runs = {}
    for name in allocator:
        print(f"{name}: {minutes:g} minutes of traced requests", flush=True)
        runs[name] = soak(name, minutes, seed)
        print(f"{name}: {runs[name]}", flush=True)
    rows = [
        "| allocator | minutes | requests | per s | deaths (exit status) | failed requests | the server's log said |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        statuses = ", ".join(r["exit_statuses"]) or "-"
        said = "; ".join(f"`{s[:80]}`" for s in r["server_log_said"][:3]) or "-"
        failed = sum(r["failed_requests"].values())
        rows.append(
            f"| {name} | {r['minutes']:g} | {r['requests']:,} | {r['requests_per_s']:.0f} | {r['deaths']} ({statuses}) "
            f"| {failed:,} | {said} |"
        )
    body = (
        "The default fleet under about ten times the shift benchmark's traced requests per second (the guard from\n"
        "6 closed-loop clients, the embedder from 2 one-item clients, chat at 3/s), on each allocator in turn:\n"
        "tritonserver 2.51's trace API unlocks the mutex of a `Trace` it has just freed (docs/triton.md, Server).\n\n"
        + "\n".join(rows)
    )
    command = "python -m benchmarks.soak " + " ".join(
        [*(f"--allocator {a}" for a in allocator), f"--minutes {minutes:g}"]
    )
    report.write(
        out,
        "Server soak: the trace API on glibc's malloc and on jemalloc",
        {"load": [asdict(ld) for ld in LOADS], "runs": runs},
        body,
        command,
    )


if __name__ == "__main__":
    app()
