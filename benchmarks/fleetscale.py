"""Benchmark: the collector and the PostgreSQL store as the fleet grows.

A simulated fleet of S servers x 20 models: each server's page is the saved default-fleet page
(tests/fixtures) with its model blocks repeated under 20 names, its counters advancing every second,
served on 127.0.0.1 by one small threaded HTTP server in its own process (`serve`), one path per
server. For each size, the direct collector scrapes every server once a second into a fresh
PostgreSQL database for `seconds`, then the reads the API and the controller make are timed.

Measured per size: the collector's CPU (its own process: the page server and PostgreSQL are other
processes), the pass time (scrape + parse + windows + store, all servers), windows written per
second, and the p50 of three reads over the store it filled: every model's windows of the last 30 s
(the API's summaries), one model's last 60 s (a model page), and the diagnosis' last 60 s.

    python -m benchmarks.fleetscale
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from benchmarks import report
from benchmarks.collect import bump, drop, page_of, postgres_database
from collectors.collector import Collector, Target
from collectors.prometheus import PrometheusSource
from dashboards.prometheus import prometheus_config
from domain.stats import percentile
from store import queries
from store.db import Store

app = typer.Typer(add_completion=False)
MODELS = 20


def server_page(server: int, models: int = MODELS) -> str:
    """The saved page with its embeddings block repeated under `models` names of this server."""
    return page_of(models, f"s{server:03d}-m{{:02d}}".format)


def serve(port: int, servers: int) -> None:
    """Serve /s<N>/metrics for N < servers until killed: each counter grows by 10 a second."""
    pages = [server_page(i) for i in range(servers)]
    began = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Triton's metrics server

        def do_GET(self) -> None:
            match = re.fullmatch(r"/s(\d+)/metrics", self.path)
            if match is None or int(match.group(1)) >= servers:
                self.send_error(404)
                return
            by = 10.0 * int(time.monotonic() - began)
            body = bump(pages[int(match.group(1))], by)
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = (
            256  # every server's scrape connects at once: the default backlog of 5 drops SYNs
        )
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the page server never answered at {url}")
        time.sleep(0.2)


@contextlib.contextmanager
def _prometheus(servers: dict[str, str]) -> Iterator[str]:
    """A Prometheus scraping `servers` (name -> metrics URL) every second, as `slatune prometheus
    config` configures it (each target labelled with its server); its URL."""
    config = prometheus_config(servers, "http://127.0.0.1:9/metrics", scrape_interval="1s", rule_files=())
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] == "triton"]
    with tempfile.TemporaryDirectory(prefix="slatune-fleetscale-") as tmp:
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:  # until it has scraped every server once
                try:
                    up = httpx.get(f"{url}/api/v1/query", params={"query": 'count(up{job="triton"} == 1)'})
                    result = up.json()["data"]["result"] if up.status_code == 200 else []
                    if result and int(result[0]["value"][1]) == len(servers):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("Prometheus never scraped every server")
                time.sleep(0.5)
            time.sleep(1.5)  # a second scrape of each: its samples are in the lookback
            yield url
        finally:
            proc.terminate()
            proc.wait()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed_ms(fn: Any, rounds: int = 20) -> float | None:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return percentile(times, 50)


def measure(servers: int, seconds: float, via_prometheus: bool = False) -> dict[str, Any]:
    port = free_port()
    page_server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleetscale", "--serve-port", str(port), "--sizes", str(servers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, handle = postgres_database()
    store = Store(url)
    stack = contextlib.ExitStack()
    try:
        store.upgrade()
        names = {i: [f"s{i:03d}-m{j:02d}" for j in range(MODELS)] for i in range(servers)}
        with store.session() as session:
            queries.sync_fleet(
                session,
                [
                    queries.ServerInfo(f"s{i:03d}", "", f"http://127.0.0.1:{port}/s{i}/metrics", False)
                    for i in names
                ],
                [queries.ModelInfo(m, f"s{i:03d}", "bulk", "d") for i, ms in names.items() for m in ms],
            )
        targets = [
            Target(f"s{i:03d}", f"http://127.0.0.1:{port}/s{i}/metrics", frozenset(ms))
            for i, ms in names.items()
        ]
        _wait_for(targets[-1].metrics_url)
        source = None
        if via_prometheus:
            prom_url = stack.enter_context(_prometheus({t.server: t.metrics_url for t in targets}))
            source = PrometheusSource(prom_url, lookback_s=5.0, deadline_s=5.0, clock=time.time)
        collector = Collector(store, targets, interval_s=1.0, retention_raw_s=None, source=source)
        assert not collector.tick().failed  # the baseline reading
        passes, windows, failed = [], 0, 0
        cpu0, wall0 = _cpu(), time.monotonic()
        while time.monotonic() - wall0 < seconds:
            began = time.monotonic()
            result = collector.tick()
            passes.append((time.monotonic() - began) * 1000)
            windows += len(result.windows)
            failed += len(result.failed)
            time.sleep(max(1.0 - (time.monotonic() - began), 0.0))
        cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
        collector.close()
        now, one = time.time(), names[0][0]

        def read(fn: Any) -> float | None:
            def run() -> None:
                with store.session() as session:
                    fn(session)

            return _timed_ms(run)

        return {
            "source": "prometheus" if via_prometheus else "page",
            "servers": servers,
            "models": servers * MODELS,
            "seconds": wall,
            "passes": len(passes),
            "failed_scrapes": failed,
            "pass_ms_p50": percentile(passes, 50),
            "pass_ms_p90": percentile(passes, 90),
            "cpu_percent_of_one_core": 100 * cpu / wall,
            "windows_per_s": windows / wall,
            "stored_windows": windows,
            "read_all_30s_ms_p50": read(lambda s: queries.recent_windows(s, now - 30)),
            "read_one_model_60s_ms_p50": read(lambda s: queries.windows(s, one, now - 60, now)),
            "read_diagnosis_60s_ms_p50": read(lambda s: queries.diagnosis_windows(s, now - 60)),
        }
    finally:
        stack.close()
        page_server.terminate()
        page_server.wait()
        store.dispose()
        drop(handle)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    table = [
        "| servers x 20 models | pass p50 / p90 | collector CPU (one core) | windows stored / s | "
        "read: all models, 30 s | read: one model, 60 s | read: diagnosis, 60 s | failed scrapes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['servers']} ({r['models']} models){' via Prometheus' if r.get('source') == 'prometheus' else ''} | {report.num(r['pass_ms_p50'])} / "
            f"{report.num(r['pass_ms_p90'])} ms | {r['cpu_percent_of_one_core']:.1f}% | {r['windows_per_s']:.0f} | "
            f"{report.num(r['read_all_30s_ms_p50'])} ms | {report.num(r['read_one_model_60s_ms_p50'])} ms | "
            f"{report.num(r['read_diagnosis_60s_ms_p50'])} ms | {r['failed_scrapes']} |"
        )
    return table


@app.command()
def main(
    sizes: Annotated[
        str, typer.Option(help="Server counts, comma-separated (20 models each).")
    ] = "5,10,25,50",
    seconds: Annotated[float, typer.Option(help="Seconds of 1 s passes per size.")] = 15.0,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = Path(
        "docs/benchmarks/fleetscale.json"
    ),
    previous: Annotated[
        Path | None, typer.Option(help="An earlier run's JSON, whose table the section shows below this one.")
    ] = None,
    prometheus: Annotated[
        bool, typer.Option(help="Read the fleet through a Prometheus scraping it (a section of its own).")
    ] = False,
    serve_port: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    if serve_port is not None:  # the page server's own process
        serve(serve_port, int(sizes))
        return
    rows = [measure(int(n), seconds, prometheus) for n in sizes.split(",")]
    res: dict[str, Any] = {"benchmark": "fleetscale", "models_per_server": MODELS, "sizes": rows}
    table = _table(rows)
    how = (
        "A Prometheus (its own process, not in the collector's figure) scrapes every server once a second, "
        "and the collector reads them all through its API (`collectors.prometheus`, one query a pass)"
        if prometheus
        else "The direct collector scrapes every server once a second"
    )
    body = "\n".join([
        "A simulated fleet: each server's page is the saved default-fleet page with 20 model blocks, counters "
        "advancing every second, served on 127.0.0.1 by one threaded HTTP server in its own process. "
        f"{how}, into PostgreSQL 15, for {seconds:.0f} s per size, on the same 2-core host as the page server "
        "and PostgreSQL (whose CPU is not in the collector's figure either).",
        "",
        *table,
    ])  # fmt: skip
    if previous is not None:
        old = json.loads(previous.read_text())
        body += f"\n\nThe run before (`{previous}`, {old['measured_at']}):\n\n" + "\n".join(
            _table(old["sizes"])
        )
    title = (
        "Collector reading Prometheus as the fleet grows"
        if prometheus
        else "Collector and store as the fleet grows"
    )
    command = "python -m benchmarks.fleetscale" + (" --prometheus" if prometheus else "")
    report.write(out, title, res, body, command)
    print(body)


if __name__ == "__main__":
    app()
