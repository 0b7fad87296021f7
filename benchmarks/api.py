"""Benchmark: the REST API's GET latency under load.

Requirement: GET latency p50/p99 at 200 requests/s on loopback while the collectors and the demo load
run (goal p99 < 25 ms).

1. `slatune up` runs the whole system in its own process (fleet, collectors at a 1 s scrape,
   reconciler, REST API; no tuning run), on a free port and a temporary data directory.
2. `slatune load --demo` drives the demo traffic at its fleet from a second process.
3. Once the store holds what the reads ask for in steady state (60 windows per model for
   `windows?limit=60`, 30 s for the summary: 60 s of collection by default) and after a few seconds
   of GETs not counted (the API's connections open, its code warm), this process sends
   an open-loop schedule of GETs at a fixed rate over a read mix (what a dashboard, a probe and a
   Prometheus scrape ask for) on keep-alive loopback connections. Each request's latency runs from
   its *scheduled* send time, so a stalled server or a late client is counted, not hidden
   (no coordinated omission).

It reports the achieved rate, errors, p50/p90/p99/max overall and per endpoint, the time the API
itself measured per route (its `slatune_http_request_seconds` histogram), and the CPU of this
client, of `up`, of the load generator, of the fleet's processes and of anything else on the
machine (a run where "other" is large was not measured on a quiet machine).

    python -m benchmarks.api [--rate 200 --duration 60]
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import typer
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import report
from benchmarks.procs import NOISY_PERCENT, machine_cpu_s, proc_cpu_s
from domain.stats import percentile
from runtime.server import free_ports

matplotlib.use("Agg")
import matplotlib.pyplot as plt

app = typer.Typer(add_completion=False)

GOAL_P99_MS = 25.0
CDF_AT = [*range(1, 100), 99.5, 99.9, 100]  # the percentiles kept per endpoint (the plot's CDF)
STEADY_FILL_S = 60.0  # seconds of windows in the store before the mix's reads return full pages
EXPIRED = "expired before it was sent"
SATURATED = 0.97  # an achieved rate under this share of the rate asked: the API did not keep up
BIN = Path(sys.executable).with_name("slatune")  # beside this Python: the venv's command

# The read mix: (path, weight); {m} is a model of the fleet, picked at random per request. The
# weights add up to 100: a dashboard polls the summary, windows and the fleet; a probe /healthz; a
# Prometheus scrape /metrics now and then; the configuration (read back from Triton) and history
# less often.
MIX: list[tuple[str, int]] = [
    ("/api/v1/summary", 20),
    ("/api/v1/models/{m}/windows?limit=60", 20),
    ("/api/v1/models", 10),
    ("/api/v1/models/{m}", 10),
    ("/api/v1/fleet", 10),
    ("/healthz", 10),
    ("/api/v1/models/{m}/config/history", 8),
    ("/api/v1/models/{m}/config", 5),
    ("/api/v1/tuning", 5),
    ("/metrics", 2),
]


@dataclass
class Sample:
    endpoint: str
    scheduled: float  # seconds after the measurement began
    latency_ms: float  # from the scheduled send time to the whole response read
    lag_ms: float  # how long it waited to be sent (the client late, or every connection busy)
    error: str | None


@dataclass
class Procs:
    """CPU seconds (user + system) of the processes taking part, from /proc."""

    client: float
    up: float
    load: float
    fleet: float
    machine_busy: float
    machine_total: float
    fleet_pids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------- processes and /proc
def pids_under(path: Path, exclude: set[int]) -> list[int]:
    """Processes whose command line names `path` (tritonserver and its model stubs)."""
    needle = str(path).encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
    return out


def client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def snapshot(up: int, load: int, fleet_pids: list[int]) -> Procs:
    busy, total = machine_cpu_s()
    return Procs(
        client=client_cpu_s(), up=proc_cpu_s(up), load=proc_cpu_s(load),
        fleet=sum(proc_cpu_s(p) for p in fleet_pids), machine_busy=busy, machine_total=total,
        fleet_pids=fleet_pids,
    )  # fmt: skip


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(base: str, up: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    """Seconds until /readyz answered 200; raise naming why `up` did not get there."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if up.poll() is not None:
            raise RuntimeError(f"slatune up exited with status {up.returncode}:\n{log_tail(log)}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp,
        ):
            if resp.status == 200:
                return time.monotonic() - began
        time.sleep(0.5)
    raise RuntimeError(f"slatune up was not ready within {timeout_s:.0f} s:\n{log_tail(log)}")


def stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> int | None:
    """Signal `proc`, wait for it, SIGKILL it if it outlives `timeout_s`; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------------------- the open-loop client
def schedule(models: list[str], rate: float, count: int, seed: int) -> list[tuple[float, str, str]]:
    """(send time in seconds, endpoint template, path) for `count` requests `1 / rate` apart."""
    rng = random.Random(seed)
    paths, weights = zip(*MIX, strict=True)
    out = []
    for i in range(count):
        template = rng.choices(paths, weights)[0]
        out.append((i / rate, template, template.format(m=rng.choice(models))))
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads whole responses: a minimal client,
    since httpx's costs about 1.5 ms of CPU a request in asyncio (0.4 ms sync, about 0.15 ms this
    one), CPU the API would miss on 2 cores. It reads Content-Length and chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._w is None or self._w.is_closing():
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        assert self._r is not None
        self._w.write(f"GET {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n\r\n".encode())
        head = await self._r.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
        if "content-length" in headers:
            body = await self._r.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self._r.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self._r.readexactly(size))
                await self._r.readexactly(2)
            await self._r.readuntil(b"\r\n")  # the last chunk's CRLF (no trailers from uvicorn)
            body = b"".join(parts)
        else:
            raise ValueError(f"{path}: a response without Content-Length nor chunked encoding")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        self._r = self._w = None


async def drive(
    base: str, plan: list[tuple[float, str, str]], connections: int, timeout_s: float, warmup_s: float
) -> tuple[list[Sample], float]:
    """Send `plan` open-loop: a dispatcher queues each request at its scheduled time and `connections`
    workers, one keep-alive connection each, send what is queued. A request waiting for a free
    connection is counted from its scheduled time; one still unsent after `timeout_s` fails as
    expired (so a stalled server cannot stretch the run). Return the samples scheduled after
    `warmup_s`, and the wall-clock time the measurement began."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    t0, t0_unix = loop.time() + 0.1, time.time() + 0.1
    queue: asyncio.Queue[tuple[float, str, str] | None] = asyncio.Queue()
    samples: list[Sample] = []
    checked: set[str] = set()

    async def worker() -> None:
        conn = Connection(host, int(port))
        while (item := await queue.get()) is not None:
            at, template, path = item
            sent = loop.time()
            error: str | None = None
            if sent - t0 - at > timeout_s:
                error = EXPIRED
            else:
                try:
                    status, body = await asyncio.wait_for(conn.get(path), timeout_s)
                    if status != 200:
                        error = f"http {status}"
                    elif template not in checked:  # the first answer of each endpoint is what it should be
                        checked.add(template)
                        if template == "/metrics":
                            assert b"slatune_http_requests_total" in body, body[:200]
                        else:
                            json.loads(body)
                except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    error = type(exc).__name__
                    conn.close()
            done = loop.time()
            if at >= warmup_s:
                samples.append(
                    Sample(template, at - warmup_s, (done - t0 - at) * 1000, (sent - t0 - at) * 1000, error)
                )
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for item in plan:
        delay = t0 + item[0] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(item)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return samples, t0_unix + warmup_s


# ---------------------------------------------------------------------- figures
def stats(samples: list[Sample]) -> dict[str, Any]:
    lat = [s.latency_ms for s in samples]
    return {
        "requests": len(samples),
        "errors": sum(s.error is not None for s in samples),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
        "mean_ms": sum(lat) / len(lat) if lat else None,
        "over_goal": sum(v >= GOAL_P99_MS for v in lat),
    }


def api_histogram(base: str) -> dict[str, dict[str, float]]:
    """The API's own GET timing per route: {route: {count, sum, le_0.025}} from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        page = resp.read().decode()
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(page):
        if fam.name != "slatune_http_request_seconds":
            continue
        for s in fam.samples:
            if s.labels.get("method") != "GET":
                continue
            route = s.labels["route"]
            if s.name.endswith("_count"):
                out[route]["count"] = s.value
            elif s.name.endswith("_sum"):
                out[route]["sum"] = s.value
            elif s.name.endswith("_bucket") and float(s.labels["le"]) == GOAL_P99_MS / 1000:
                out[route]["le_goal"] = s.value
    return dict(out)


def in_app(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per route over the measurement: requests, mean time inside the app, share under the goal."""
    out = {}
    for route, a in after.items():
        b = before.get(route, {})
        n = a.get("count", 0) - b.get("count", 0)
        if n <= 0:
            continue
        out[route] = {
            "requests": int(n),
            "mean_ms": 1000 * (a.get("sum", 0) - b.get("sum", 0)) / n,
            "under_goal": (a.get("le_goal", 0) - b.get("le_goal", 0)) / n,
        }
    return out


def app_route(path: str, measured: dict[str, Any]) -> float | None:
    """The API's own mean time for the endpoint `path` of MIX (its histogram labels a route by its
    template, /api/v1/models/{model})."""
    route = path.split("?")[0].replace("{m}", "{model}")
    if route in measured:
        ms: float = measured[route]["mean_ms"]
        return ms
    return None


def timeline(samples: list[Sample]) -> list[dict[str, Any]]:
    """Per second of the schedule: requests, p50, p99, max."""
    by_s: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        by_s[int(s.scheduled)].append(s.latency_ms)
    return [
        {
            "t": t,
            "requests": len(v),
            "p50_ms": percentile(v, 50),
            "p99_ms": percentile(v, 99),
            "max_ms": max(v),
        }
        for t, v in sorted(by_s.items())
    ]


def cpu_figures(a: Procs, b: Procs, wall_s: float, cpus: int) -> dict[str, float]:
    """Each party's CPU over the measurement, in % of one core; `other` is the rest of the machine."""
    ours = {
        "client": b.client - a.client, "up": b.up - a.up, "load": b.load - a.load,
        "fleet": b.fleet - a.fleet,
    }  # fmt: skip
    busy = b.machine_busy - a.machine_busy
    total = b.machine_total - a.machine_total
    pc = {f"{k}_percent_of_one_core": 100 * v / wall_s for k, v in ours.items()}
    pc["other_percent_of_one_core"] = 100 * max(busy - sum(ours.values()), 0.0) / wall_s
    pc["machine_busy_percent"] = 100 * busy / total if total else 0.0
    pc["cores"] = cpus
    return pc


# ---------------------------------------------------------------------- the run
def run(
    rate: float, duration_s: float, fill_s: float, warmup_s: float, connections: int, timeout_s: float, seed: int,
    database_url: str | None, demo_load: bool,
) -> tuple[dict[str, Any], list[Sample]]:  # fmt: skip
    cpus = len(os.sched_getaffinity(0))
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="slatune-api-") as tmp_:
        tmp = Path(tmp_)
        (port,) = free_ports(1)
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLATUNE_")}
        env["COLUMNS"] = "200"
        # `up` and the load stop by themselves after this, should this process be killed
        bound = 300 + fill_s + warmup_s + duration_s + 2 * timeout_s
        up_cmd = [str(BIN), "up", "--data-dir", str(tmp), "--port", str(port), "--duration", f"{bound:g}"]
        if database_url:
            up_cmd += ["--database-url", database_url]
        up_log, load_log = tmp / "up.log", tmp / "load.log"
        up: subprocess.Popen[bytes] | None = None
        load: subprocess.Popen[bytes] | None = None
        left: list[int] = []
        statuses: dict[str, int | None] = {}
        try:
            with up_log.open("wb") as out:
                up = subprocess.Popen(
                    up_cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                )  # fmt: skip
            ready_s = wait_ready(base, up, up_log, timeout_s=150)
            print(f"slatune up ready in {ready_s:.1f} s at {base}", flush=True)
            if demo_load:
                load_cmd = [str(BIN), "load", "--demo", "--data-dir", str(tmp)]
                load_cmd += ["--duration", f"{bound:g}", "--max-requests", "10000000"]
                with load_log.open("wb") as out:
                    load = subprocess.Popen(
                        load_cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                        start_new_session=True,
                    )  # fmt: skip
            with urllib.request.urlopen(f"{base}/api/v1/fleet", timeout=10) as resp:
                models: list[str] = json.loads(resp.read())["models"]
            print(
                f"filling the store for {fill_s:g} s" + (" under the demo load" if load else ""), flush=True
            )
            filled = time.monotonic() + fill_s
            while time.monotonic() < filled:
                for name, proc, log in (("slatune up", up, up_log), ("the demo load", load, load_log)):
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(f"{name} stopped early ({proc.returncode}):\n{log_tail(log)}")
                time.sleep(min(1.0, max(filled - time.monotonic(), 0)))
            up_pid, load_pid = up.pid, (load.pid if load else 0)
            fleet_pids = pids_under(tmp, {os.getpid(), up_pid, load_pid})
            count = int(rate * (warmup_s + duration_s))
            plan = schedule(models, rate, count, seed)
            print(
                f"{count} GETs at {rate:g}/s: {warmup_s:g} s warmup, then {duration_s:g} s measured",
                flush=True,
            )

            # The measured part starts `warmup_s` into the schedule: snapshot CPU and the API's own
            # histogram then, from a thread beside the event loop.
            marks: dict[str, Any] = {}

            def mark() -> tuple[Procs, dict[str, dict[str, float]], float]:
                return snapshot(up_pid, load_pid, fleet_pids), api_histogram(base), time.monotonic()

            async def main() -> tuple[list[Sample], float]:
                async def mark_at(delay: float, key: str) -> None:
                    await asyncio.sleep(delay)
                    marks[key] = await asyncio.to_thread(mark)

                marker = asyncio.create_task(mark_at(0.1 + warmup_s, "begin"))
                result = await drive(base, plan, connections, timeout_s, warmup_s)
                await marker
                marks["end"] = await asyncio.to_thread(mark)
                return result

            samples, began = asyncio.run(main())
            (cpu_a, hist_a, t_a), (cpu_b, hist_b, t_b) = marks["begin"], marks["end"]
            if load is not None and load.poll() is not None:
                raise RuntimeError(f"the demo load stopped early ({load.returncode}):\n{log_tail(load_log)}")
            if up.poll() is not None:
                raise RuntimeError(f"slatune up stopped early ({up.returncode}):\n{log_tail(up_log)}")
        finally:
            statuses["load"] = stop(load, signal.SIGINT, 30)
            statuses["up"] = stop(up, signal.SIGTERM, 120)
            left = pids_under(tmp, {os.getpid()})
            for pid in left:  # what `up` should have stopped: started by it, so ours to end
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                print(f"WARNING: {len(left)} process(es) of the fleet outlived `slatune up`: {left}")

    wall_s = t_b - t_a
    end_of_last = max(s.scheduled + s.latency_ms / 1000 for s in samples)
    answered = sum(s.error is None for s in samples) / end_of_last if end_of_last else 0.0
    by_endpoint = {path: stats([s for s in samples if s.endpoint == path]) for path, _ in MIX}
    overall = stats(samples)
    errors = Counter(f"{s.endpoint}: {s.error}" for s in samples if s.error)
    lag = [s.lag_ms for s in samples]
    res: dict[str, Any] = {
        "benchmark": "api",
        "cpus": cpus,
        "loadavg_before": loadavg_before,
        "rate_per_s": rate,
        "duration_s": duration_s,
        "fill_s": fill_s,
        "warmup_s": warmup_s,
        "connections": connections,
        "request_timeout_s": timeout_s,
        "seed": seed,
        "demo_load": demo_load,
        "store": "PostgreSQL" if database_url and database_url.startswith("postgresql") else "SQLite (WAL)",
        "mix": {path: weight for path, weight in MIX},
        "up_ready_s": ready_s,
        "achieved_rate_per_s": answered,  # answers (200) a second, from the first send to the last answer
        "goal_p99_ms": GOAL_P99_MS,
        "saturated": answered < SATURATED * rate,
        "goal_met": overall["p99_ms"] is not None and overall["p99_ms"] < GOAL_P99_MS and not overall["errors"],
        "overall": overall,
        "endpoints": by_endpoint,
        "errors": dict(errors),
        "send_lag_ms": {"p50": percentile(lag, 50), "p99": percentile(lag, 99), "max": max(lag) if lag else None},
        "in_app": in_app(hist_a, hist_b),
        "cpu": cpu_figures(cpu_a, cpu_b, wall_s, cpus),
        "fleet_processes": len(cpu_a.fleet_pids),
        "left_running_after_stop": len(left),
        "exit_status": statuses,
        "measured_from_unix_s": began,
        "timeline": timeline(samples),
        "cdf_at_percent": CDF_AT,
        "cdf_ms": {
            path: [percentile(v, q) for q in CDF_AT]
            for path, _ in MIX
            if (v := [s.latency_ms for s in samples if s.endpoint == path])
        },
    }  # fmt: skip
    return res, samples


# ---------------------------------------------------------------------- report
def plot(res: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    tl = res["timeline"]
    t = [p["t"] for p in tl]
    left.plot(t, [p["p50_ms"] for p in tl], label="p50", color="tab:blue")
    left.plot(t, [p["p99_ms"] for p in tl], label="p99", color="tab:orange")
    left.plot(t, [p["max_ms"] for p in tl], label="max", color="tab:gray", alpha=0.5, lw=0.8)
    left.axhline(GOAL_P99_MS, color="red", ls="--", label=f"goal: p99 < {GOAL_P99_MS:g} ms")
    left.set_yscale("log")
    left.set_xlabel("second of the measurement (by scheduled send time)")
    left.set_ylabel("latency per second (ms)")
    left.legend(fontsize=8)
    left.set_title("every GET, per second")
    for endpoint, values in res["cdf_ms"].items():
        right.plot(values, [q / 100 for q in res["cdf_at_percent"]], label=endpoint, lw=1)
    right.axvline(GOAL_P99_MS, color="red", ls="--")
    right.axhline(0.99, color="gray", ls=":", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("latency from the scheduled send time (ms)")
    right.set_ylabel("fraction of requests")
    right.set_title("CDF per endpoint")
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"REST API GETs at {res['rate_per_s']:g}/s on loopback beside the collectors"
        + (" and the demo load" if res["demo_load"] else " (no demo load)")
        + f" ({res['cpus']} cores)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(res: dict[str, Any], png: Path | None) -> str:
    o, cpu = res["overall"], res["cpu"]
    verdict = "met" if res["goal_met"] else "missed"
    rows = [
        "| endpoint | share | requests | errors | p50 ms | p90 ms | p99 ms | max ms | in the app: mean ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    app_ms = {path: app_route(path, res["in_app"]) for path, _ in MIX}
    for path, e in sorted(res["endpoints"].items(), key=lambda kv: -(kv[1]["p99_ms"] or 0)):
        rows.append(
            f"| `{path}` | {res['mix'][path]}% | {e['requests']} | {e['errors']} | {report.num(e['p50_ms'])} "
            f"| {report.num(e['p90_ms'])} | {report.num(e['p99_ms'])} | {report.num(e['max_ms'])} "
            f"| {report.num(app_ms.get(path))} |"
        )
    rows.append(
        f"| **all** | 100% | {o['requests']} | {o['errors']} | **{report.num(o['p50_ms'])}** | {report.num(o['p90_ms'])} "
        f"| **{report.num(o['p99_ms'])}** | {report.num(o['max_ms'])} | |"
    )
    lag = res["send_lag_ms"]
    kinds = Counter[str]()
    for what, n in res["errors"].items():
        kinds[what.rsplit(": ", 1)[1]] += n
    errors = ", ".join(f"{n} {k}" for k, n in kinds.most_common()) or "none"
    saturated = (
        f" **The API did not keep up**: it answered {res['achieved_rate_per_s']:.0f} GETs/s of the "
        f"{res['rate_per_s']:g}/s sent, so requests queued for the whole run (their latency grew over time, see "
        "the plot)"
        + (
            f" and {kinds[EXPIRED]} older than the {res['request_timeout_s']:g} s timeout expired unsent"
            if kinds[EXPIRED]
            else ""
        )
        + ": these percentiles measure that queue."
        if res["saturated"]
        else ""
    )
    return "\n".join([
        f"`slatune up` (fleet, collectors at a 1 s scrape, reconciler, API; {res['store']} store) and "
        + ("`slatune load --demo` in their own processes" if res["demo_load"] else "**no demo load** (a comparison run)")
        + f", on {res['cpus']} cores. After {res['fill_s']:g} s of collection"
        + (" under the demo load" if res["demo_load"] else "")
        + (
            " (the reads then return steady-state pages: 60 windows, 30 s summarised)"
            if res["fill_s"] >= STEADY_FILL_S
            else f" (less than the {STEADY_FILL_S:g} s after which `windows?limit=60` returns a full page)"
        )
        + f" and {res['warmup_s']:g} s of GETs not counted, "
        f"{o['requests']} GETs over {res['duration_s']:g} s, open loop at {res['rate_per_s']:g}/s "
        f"(answered {res['achieved_rate_per_s']:.1f}/s) on up to {res['connections']} keep-alive loopback connections. "
        "Latency runs from each request's scheduled send time to its whole response (no coordinated omission); "
        "errors are counted in the percentiles with the time they took.",
        "",
        f"**p50 {report.num(o['p50_ms'])} ms, p99 {report.num(o['p99_ms'])} ms: the goal (p99 < {GOAL_P99_MS:g} ms) is "
        f"{verdict}.** {o['over_goal']} of {o['requests']} requests ({100 * o['over_goal'] / max(o['requests'], 1):.1f}%) "
        f"took {GOAL_P99_MS:g} ms or more; errors: {errors}.{saturated}",
        "",
        *rows,
        "",
        "\"In the app\" is the API's own `slatune_http_request_seconds` (its middleware: routing, the worker "
        "thread and the handler, not the HTTP parsing nor the wait for the event loop).",
        "",
        f"CPU over the measurement, in % of one core: this client {cpu['client_percent_of_one_core']:.0f}%, "
        f"`slatune up` {cpu['up_percent_of_one_core']:.0f}%, the load generator {cpu['load_percent_of_one_core']:.0f}%, "
        f"the fleet (tritonserver and model stubs) {cpu['fleet_percent_of_one_core']:.0f}%, anything else "
        f"{cpu['other_percent_of_one_core']:.0f}%; the machine was {cpu['machine_busy_percent']:.0f}% busy. "
        f"Requests waited {report.num(lag['p50'], 2)} ms at p50 and {report.num(lag['p99'], 1)} ms at p99 before they were "
        "sent (the client late, or every connection busy with a slower answer)."
        + (
            f" **Other processes took {cpu['other_percent_of_one_core']:.0f}% of a core: the machine was not quiet, "
            "and these figures overstate the latency.**"
            if cpu["other_percent_of_one_core"] > NOISY_PERCENT
            else ""
        ),
        *([] if png is None else ["", f"![GET latency over time and per endpoint]({os.path.relpath(png, report.DOC.parent)})"]),
    ])  # fmt: skip


@app.command()
def main(
    rate: Annotated[float, typer.Option(help="GETs per second, open loop.", min=1, max=5000)] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds measured.", min=1, max=3600)] = 60.0,
    fill: Annotated[
        float,
        typer.Option(
            help="Seconds of collection (and demo load) before the first GET: 60 fills windows?limit=60.",
            min=0,
        ),
    ] = 60.0,
    warmup: Annotated[
        float, typer.Option(help="Seconds of GETs before measuring (not counted).", min=0)
    ] = 5.0,
    connections: Annotated[int, typer.Option(help="Keep-alive connections at most.", min=1)] = 32,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.", min=0.1)] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the request mix.")] = 0,
    demo_load: Annotated[
        bool,
        typer.Option(help="Drive the demo traffic at the fleet (--no-demo-load: the API alone, to compare)."),
    ] = True,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="The store (default: SQLite in the temporary data directory)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = Path("docs/benchmarks/api.json"),
    png: Annotated[Path, typer.Option(help="Where the plot goes.")] = Path("docs/benchmarks/api.png"),
    samples_csv: Annotated[
        Path | None, typer.Option("--samples", help="Also write every request measured here, as CSV.")
    ] = None,
) -> None:
    """GET latency of the REST API at a fixed rate beside the collectors and the demo load."""
    if not BIN.exists():
        raise typer.BadParameter(f"{BIN} is missing: run `make setup` first")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    res, samples = run(rate, duration, fill, warmup, connections, timeout, seed, database_url, demo_load)
    if samples_csv is not None:
        samples_csv.parent.mkdir(parents=True, exist_ok=True)
        with samples_csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["endpoint", "scheduled_s", "latency_ms", "lag_ms", "error"])
            w.writerows(
                [s.endpoint, f"{s.scheduled:.4f}", f"{s.latency_ms:.3f}", f"{s.lag_ms:.3f}", s.error or ""]
                for s in samples
            )
    plot(res, png)
    command = " ".join(["python -m benchmarks.api", *map(shlex.quote, sys.argv[1:])])
    body = markdown(res, png)
    report.write(out, "REST API: GET latency under load", res, body, command)
    print(body)


if __name__ == "__main__":
    app()
