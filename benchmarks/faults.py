"""Faults injected into a running slatune, real components only, and what each one cost.

`slatune up` runs as its own process on a PostgreSQL cluster of this benchmark's own (so the
store can be restarted and stopped), with the mixed demo traffic at half rate driven from here at
its fleet. For each fault, in a fresh control plane:

- pg-restart: `pg_ctl restart -m fast` under load;
- pg-stop-20s: the store stopped for 20 s, then started again;
- triton-sigkill: the tritonserver killed (the supervisor restarts it);
- triton-sigstop-20s: the tritonserver frozen for 20 s, then continued;
- up-sigkill-mid-tuning: `slatune up` killed while a tuning run measures a trial, then started
  again (the fleet is an attached Triton here: it is what outlives a control plane);
- proposals-50-concurrent: 50 proposals for one model at once through the API.

Around each fault a person's proposal is made (before it, and during it where the API answers), and
at the end the fleet must run the newest accepted one. Measured per fault:

- `requests_failed`: the load's failed requests, by reason (the client's view);
- `windows_lost_s`: seconds of the fault's span (from the fault to 5 s after recovery) that no
  stored window of the guard covers;
- `recover_s`: from the fault's end to `/readyz` answering 200 again;
- `decisions_lost`: accepted proposals not in force at the end, or applied out of order.

    python -m benchmarks.faults            # all faults, ~8 minutes on 2 cores
    python -m benchmarks.faults --only pg-restart

Figures go to docs/benchmarks/faults.json, and the table to docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from domain.spec import resolve_spec
from runtime.fleet import Fleet, read_state
from runtime.load import LoadRun, demo_mix, targets_for
from tests.conftest import pids_running
from tests.integration.test_up import attached_spec
from tests.pgcluster import PgCluster, pg_cluster
from tests.promstack import free_port

TOKEN = "faults-benchmark-token-0123456789"
SLATUNE = str(Path(sys.executable).parent / "slatune")
OUT_JSON = Path("docs/benchmarks/faults.json")
OUT_MD = Path("docs/reliability.md")
WATCHED = "safety-guard"  # the model whose windows are checked for gaps

app = typer.Typer(add_completion=False)


@dataclass
class Outcome:
    fault: str
    requests_sent: int = 0
    requests_failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    windows_lost_s: float = 0.0
    recover_s: float | None = None
    decisions_lost: int = 0
    api_said: list[str] = field(default_factory=list)
    """What /readyz said while the fault lasted: each check that was not ok, with its state
    ("store: unreachable", "reconciler: failing", "collector: stuck")."""
    up_survived: bool = True
    notes: str = ""


class Up:
    """`slatune up` as a process, on 127.0.0.1, with its log in the data directory."""

    def __init__(self, data_dir: Path, database_url: str, spec: Path | None = None) -> None:
        self.data_dir, self.database_url, self.spec = data_dir, database_url, spec
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30, trust_env=False,
        )  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> None:
        env = {
            **os.environ,
            "SLATUNE_API_TOKEN": TOKEN,
            "SLATUNE_DATABASE_URL": self.database_url,
            "COLUMNS": "160",
        }
        log = (self.data_dir / f"up-{time.monotonic_ns()}.log").open("wb")
        args = [SLATUNE, "up", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        args += ["-s", str(self.spec)] if self.spec else []
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slatune up did not become ready: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.data_dir.glob("up-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def readiness(self) -> tuple[int, dict[str, str]]:
        try:
            r = self.api.get("/readyz", timeout=5)
            return r.status_code, r.json().get("checks", {})
        except (httpx.HTTPError, ValueError) as exc:
            return 0, {"api": f"unreachable: {exc.__class__.__name__}"}

    def ready(self) -> bool:
        return self.readiness()[0] == 200

    def propose(self, model: str, knobs: dict[str, Any], reason: str) -> int | None:
        """A person's proposal; the version id when the API accepted it, None when it did not."""
        try:
            r = self.api.post(f"/api/v1/models/{model}/config", json={"knobs": knobs, "reason": reason})
        except httpx.HTTPError:
            return None
        if r.status_code not in (200, 202) or r.json().get("version") is None:
            return None
        return int(r.json()["version"]["id"])

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.api.close()


@contextmanager
def traffic(spec_path: Path | None, endpoints: dict[str, str], seconds: float) -> Iterator[LoadRun]:
    """The demo mix at half rate against the fleet's servers, bounded in time and count."""
    spec = resolve_spec(str(spec_path) if spec_path else None)
    run = LoadRun(
        demo_mix(0.5), targets_for(spec, lambda s: endpoints[s]), duration_s=seconds, max_requests=int(seconds * 40),
        seed=11,
    ).start()  # fmt: skip
    try:
        yield run
    finally:
        run.stop()
        run.join()


def watch_readiness(up: Up, stop: threading.Event, said: set[str]) -> None:
    """Record every check /readyz reports as not ok while the fault lasts."""
    while not stop.wait(0.5):
        _, checks = up.readiness()
        said.update(
            f"{k}: {v.split(':')[0]}" for k, v in checks.items() if v != "ok"
        )  # e.g. "store: unreachable"


def coverage_lost(up: Up, start: float, end: float) -> float:
    """Seconds of [start, end] no stored window of the watched model covers."""
    r = up.api.get(
        f"/api/v1/models/{WATCHED}/windows", params={"start": start - 5, "end": end + 5, "limit": 10_000}
    )
    spans = sorted((max(w["start"], start), min(w["end"], end)) for w in r.json())
    covered, reach = 0.0, start
    for a, b in spans:
        if b <= reach:
            continue
        covered += b - max(a, reach)
        reach = b
    return max(0.0, (end - start) - covered)


def decisions_lost(up: Up, model: str, accepted: list[int], timeout_s: float = 90.0) -> int:
    """Accepted proposals not in force at the end: the newest must be applied and run (older ones
    overtaken, never applied after it); 1 when it is not."""
    if not accepted:
        return 0
    newest = max(accepted)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            v = up.api.get(f"/api/v1/models/{model}/config/versions/{newest}").json()
            running = up.api.get(f"/api/v1/models/{model}/config").json()["running"]
        except (httpx.HTTPError, ValueError, KeyError):
            time.sleep(1)
            continue
        if v.get("state") == "applied" and all(running.get(k) == x for k, x in v["knobs"].items()):
            history = up.api.get(f"/api/v1/models/{model}/config/history", params={"limit": 200}).json()
            later = [
                h for h in history if h["id"] < newest and (h["applied_at"] or 0) > (v["applied_at"] or 0)
            ]
            return 1 if later else 0  # an older version applied after the newest: out of order
        time.sleep(1)
    return 1


def run_fault(
    name: str,
    pg: PgCluster,
    inject: Callable[[Up], None],
    heal: Callable[[Up], None],
    *,
    attached: Fleet | None = None,
    spec_path: Path | None = None,
    propose_during: bool = True,
) -> Outcome:
    out = Outcome(name)
    with tempfile.TemporaryDirectory(prefix=f"slatune-fault-{name}-") as tmp, ExitStack() as stack:
        up = Up(Path(tmp), pg.url, spec_path)
        up.start()
        stack.callback(up.stop)
        if attached is not None:
            endpoints = {s.name: attached.endpoints(s.name).grpc for s in attached.spec.servers}
        else:
            endpoints = {n: e.grpc for n, e in read_state(Path(tmp) / "fleet").endpoints.items()}
        load = stack.enter_context(traffic(spec_path, endpoints, 120.0))
        time.sleep(5)
        accepted = [v for v in [up.propose("embeddings", {"instances": 3}, "before the fault")] if v]
        time.sleep(3)
        said: set[str] = set()
        stop = threading.Event()
        watcher = threading.Thread(target=watch_readiness, args=(up, stop, said), daemon=True)
        watcher.start()
        began = time.time()
        inject(up)
        if propose_during:
            v = up.propose("embeddings", {"instances": 2, "priority": 2}, "during the fault")
            accepted += [v] if v else []
        heal(up)
        healed = time.monotonic()
        deadline = healed + 120
        while not up.ready() and time.monotonic() < deadline:
            time.sleep(0.25)
        out.recover_s = round(time.monotonic() - healed, 2) if up.ready() else None
        stop.set()
        watcher.join(5)
        out.api_said = sorted(said)
        v = up.propose("embeddings", {"instances": 2, "priority": 1}, "after the fault")
        accepted += [v] if v else []
        out.decisions_lost = decisions_lost(up, "embeddings", accepted)
        time.sleep(5)
        ended = time.time()
        out.up_survived = up.alive()
        out.windows_lost_s = round(coverage_lost(up, began, ended - 5), 1)
        load.stop()
        report = load.join()
        out.requests_sent, out.requests_failed = report.sent, report.failed
        reasons: dict[str, int] = {}
        for s in report.models.values():
            for reason, n in s.failed.items():
                reasons[reason] = reasons.get(reason, 0) + n
        out.failed_by_reason = reasons
    return out


def _triton_pids(up: Up) -> list[int]:
    """The fleet's tritonserver processes (not its python backend stubs, which name the
    repository too)."""
    out = []
    for pid in pids_running(str(up.data_dir / "fleet" / "repositories")):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"tritonserver"):
            out.append(pid)
    return out


def _triton_pid(up: Up) -> int:
    pids = _triton_pids(up)
    assert len(pids) == 1, pids
    return pids[0]


def pg_restart(pg: PgCluster) -> Outcome:
    return run_fault("pg-restart", pg, lambda _: pg.restart(), lambda _: None)


def pg_stop_20s(pg: PgCluster) -> Outcome:
    def heal(_: Up) -> None:
        time.sleep(20)
        pg.start()

    return run_fault("pg-stop-20s", pg, lambda _: pg.stop(), heal)


def triton_sigkill(pg: PgCluster) -> Outcome:
    killed: list[int] = []

    def inject(up: Up) -> None:
        killed.append(_triton_pid(up))
        os.kill(killed[0], signal.SIGKILL)

    def heal(up: Up) -> None:  # the supervisor restarts it: healed once a new one runs
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not set(_triton_pids(up)) - set(killed):
            time.sleep(0.2)

    return run_fault("triton-sigkill", pg, inject, heal)


def triton_sigstop_20s(pg: PgCluster) -> Outcome:
    frozen: list[int] = []

    def inject(up: Up) -> None:
        frozen.append(_triton_pid(up))
        os.kill(frozen[0], signal.SIGSTOP)

    def heal(_: Up) -> None:
        time.sleep(20)
        os.kill(frozen[0], signal.SIGCONT)

    return run_fault("triton-sigstop-20s", pg, inject, heal)


def up_sigkill_mid_tuning(pg: PgCluster) -> Outcome:
    """The fleet is a Triton slatune attaches to (what outlives a control plane); slatune up is
    killed while its tuning run measures a trial, and started again on the same data."""
    with (
        tempfile.TemporaryDirectory(prefix="slatune-fault-fleet-") as tmp,
        Fleet(resolve_spec(None), Path(tmp)) as fleet,
    ):
        spec = attached_spec(fleet, Path(tmp))

        def inject(up: Up) -> None:
            r = up.api.post("/api/v1/tuning", json={"budget": 4, "window_s": 8, "warmup_s": 2})
            assert r.status_code in (200, 201, 202), r.text
            run_id = r.json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a trial of its own is in force
                trials = up.api.get(f"/api/v1/tuning/{run_id}").json().get("trials", [])
                if len(trials) >= 2:
                    break
                time.sleep(0.5)
            assert up.proc is not None
            up.proc.send_signal(signal.SIGKILL)
            up.proc.wait(30)

        def heal(up: Up) -> None:
            up.start()

        return run_fault(
            "up-sigkill-mid-tuning", pg, inject, heal, attached=fleet, spec_path=spec, propose_during=False
        )


def proposals_50_concurrent(pg: PgCluster) -> Outcome:
    def inject(up: Up) -> None:
        accepted: list[int | None] = [None] * 50

        def one(i: int) -> None:
            accepted[i] = up.propose(
                "embeddings", {"instances": 1 + i % 4, "priority": 1 + i % 3}, f"storm {i}"
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    return run_fault("proposals-50-concurrent", pg, inject, lambda _: None)


FAULTS: dict[str, Callable[[PgCluster], Outcome]] = {
    "pg-restart": pg_restart,
    "pg-stop-20s": pg_stop_20s,
    "triton-sigkill": triton_sigkill,
    "triton-sigstop-20s": triton_sigstop_20s,
    "up-sigkill-mid-tuning": up_sigkill_mid_tuning,
    "proposals-50-concurrent": proposals_50_concurrent,
}


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| fault | requests sent | failed (by reason) | windows lost (s) | recovered in (s) | decisions lost | /readyz said meanwhile |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(o.failed_by_reason.items()))
        said = "; ".join(o.api_said)[:300] or "ok throughout"
        rows.append(
            f"| {o.fault} | {o.requests_sent} | {o.requests_failed}{f' ({reasons})' if reasons else ''} | "
            f"{o.windows_lost_s:g} | {o.recover_s if o.recover_s is not None else 'never'} | {o.decisions_lost} | {said} |"
        )
    return "\n".join(rows)


@app.command()
def main(
    only: Annotated[list[str], typer.Option(help=f"Run only these faults ({', '.join(FAULTS)}).")] = [],  # noqa: B006
    out_json: Annotated[Path, typer.Option(help="Where the figures go.")] = OUT_JSON,
    out_md: Annotated[Path, typer.Option(help="Where the table goes.")] = OUT_MD,
) -> None:
    unknown = sorted(set(only) - set(FAULTS))
    if unknown:
        raise typer.BadParameter(f"unknown fault(s) {', '.join(unknown)}", param_hint="--only")
    outcomes = []
    with pg_cluster() as pg:
        for name, fault in FAULTS.items():
            if only and name not in only:
                continue
            print(f"fault {name} ...", flush=True)
            began = time.monotonic()
            o = fault(pg)
            print(f"  {json.dumps(asdict(o))} ({time.monotonic() - began:.0f} s)", flush=True)
            outcomes.append(o)
    result = {
        "benchmark": "faults",
        "cpus": len(os.sched_getaffinity(0)),
        "faults": [asdict(o) for o in outcomes],
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(outcomes))
    if not only:
        write_reliability(out_md, outcomes)


def write_reliability(path: Path, outcomes: list[Outcome]) -> None:
    text = path.read_text() if path.exists() else ""
    marker = "<!-- faults table: written by python -m benchmarks.faults -->"
    body = f"{marker}\n{table(outcomes)}\n{marker}"
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + body + tail
    else:
        text = text + ("\n" if text else "") + body + "\n"
    path.write_text(text)


if __name__ == "__main__":
    app()
