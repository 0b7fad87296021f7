"""Benchmark: the collector's costs.

1. Parse + window + store time of one metrics page of 100 models (goal < 5 ms), on SQLite and
   PostgreSQL; the page is the saved default-fleet page with its model blocks repeated under 100 names.
2. Windows stored per second on SQLite and PostgreSQL (100-window batches, one transaction each).
3. The collector's CPU at a 1 s scrape of the running default fleet under the demo load (goal < 2%
   of one core). The load runs in its own process (`slatune load --demo`) so it is not counted.

    python -m benchmarks.collect
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import create_engine, text

from benchmarks import report
from collectors.collector import Collector, TickResult
from collectors.fleet import fleet_collector
from collectors.parse import parse, parse_full
from collectors.window import model_window
from controlplane.startup import register_fleet
from domain.spec import resolve_spec
from domain.stats import percentile
from runtime.fleet import Fleet
from store import queries
from store.db import Store

app = typer.Typer(add_completion=False)
FIXTURE = Path("tests/fixtures/triton-2.51-default-fleet.metrics")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


COUNTER = re.compile(r"^(nv_inference_\w+?\{[^}]*\}) (\d+(?:\.\d+)?)$", re.M)


def page_of(models: int, name: Callable[[int], str] = "m{:03d}".format) -> str:
    """The saved page with every model line repeated under `models` names (`name(i)`: m000, m001, ...)."""
    lines = FIXTURE.read_text().splitlines()
    head = [ln for ln in lines if 'model="' not in ln]
    body = [ln for ln in lines if 'model="embeddings"' in ln]
    out = list(head)
    for i in range(models):
        out += [ln.replace('model="embeddings"', f'model="{name(i)}"') for ln in body]
    return "\n".join(out) + "\n"


def bump(page: str, by: float) -> str:
    """The same page with every counter value increased (a later scrape)."""
    return COUNTER.sub(lambda m: f"{m.group(1)} {float(m.group(2)) + by}", page)


def prepared_store(url: str, models: int) -> tuple[Store, dict[str, int]]:
    store = Store(url)
    store.upgrade()
    with store.session() as session:
        ids = queries.sync_fleet(
            session,
            [queries.ServerInfo("s", "127.0.0.1:1", "http://127.0.0.1:2/metrics", True)],
            [queries.ModelInfo(f"m{i:03d}", "s", "bulk", "d", None, None) for i in range(models)],
        )
    return store, ids


def parse_and_store(url: str, models: int = 100, rounds: int = 50) -> dict[str, float | None]:
    store, ids = prepared_store(url, models)
    first = parse(page_of(models))
    text_ = bump(page_of(models), 10)
    parse_ms, window_ms, store_ms = [], [], []
    for i in range(rounds):
        t0 = time.perf_counter()
        scrape = parse(text_)
        t1 = time.perf_counter()
        windows = [
            model_window(m, first.models.get(m), s, float(i), i + 1.0) for m, s in scrape.models.items()
        ]
        t2 = time.perf_counter()
        with store.session() as session:
            versions = queries.applied_versions(session)
            queries.add_windows(session, ids, windows, versions, 1.0)
        t3 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        window_ms.append((t2 - t1) * 1000)
        store_ms.append((t3 - t2) * 1000)
    store.dispose()
    total = [a + b + c for a, b, c in zip(parse_ms, window_ms, store_ms, strict=True)]
    return {
        "parse_ms_p50": percentile(parse_ms, 50),
        "window_ms_p50": percentile(window_ms, 50),
        "store_ms_p50": percentile(store_ms, 50),
        "total_ms_p50": percentile(total, 50),
        "total_ms_p90": percentile(total, 90),
    }


def windows_per_second(url: str, seconds: float = 5.0) -> float:
    store, ids = prepared_store(url, 100)
    windows = [
        model_window(f"m{i:03d}", None, parse(page_of(1)).models["m000"], 0.0, 1.0) for i in range(100)
    ]
    written, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        with store.session() as session:
            written += queries.add_windows(session, ids, windows, {}, 1.0)
    rate = written / (time.perf_counter() - began)
    store.dispose()
    return rate


def collector_cpu(seconds: float) -> dict[str, Any]:
    spec = resolve_spec(None)
    with tempfile.TemporaryDirectory(prefix="slatune-bench-") as tmp:
        work = Path(tmp) / "fleet"
        with Fleet(spec, work) as fleet:
            store = Store(f"sqlite:///{Path(tmp) / 'slatune.db'}")
            store.upgrade()
            endpoints = {s.name: fleet.endpoints(s.name) for s in spec.servers}
            register_fleet(store, spec, endpoints)
            collector: Collector = fleet_collector(store, spec, endpoints, interval_s=1.0)
            load_cmd = ["load", "--demo", "--duration", str(seconds + 10), "--data-dir", str(Path(tmp))]
            load = subprocess.Popen(
                [sys.executable, "-m", "controlplane.cli", *load_cmd],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(3)
                collector.tick()
                cpu0, wall0 = _cpu(), time.monotonic()
                ticks: list[TickResult] = []
                while time.monotonic() - wall0 < seconds:
                    began = time.monotonic()
                    ticks.append(collector.tick())
                    time.sleep(max(1.0 - (time.monotonic() - began), 0))
                cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
            finally:
                load.terminate()
                load.wait()
                collector.close()
                store.dispose()
    return {
        "seconds": wall,
        "scrapes": len(ticks),
        "windows": sum(len(t.windows) for t in ticks),
        "cpu_s": cpu,
        "cpu_percent_of_one_core": 100 * cpu / wall,
    }


def _previous(old: dict[str, Any], path: Path) -> str:
    """The earlier run's 100-model figures and collector CPU, in a sentence."""
    p, c = old["page_100_models"], old["collector_cpu"]
    stores = "; ".join(
        f"{name} {p[name]['total_ms_p50']:.2f} ms (parse {p[name]['parse_ms_p50']:.2f}, windows "
        f"{p[name]['window_ms_p50']:.2f}, store {p[name]['store_ms_p50']:.2f})"
        for name in ("sqlite", "postgresql")
    )
    return (
        f"The run before (`{path}`, {old['measured_at']}): 100-model page p50 {stores}; prometheus_client's "
        f"parser {old.get('page_100_models_full_parse_ms', float('nan')):.1f} ms; windows stored per second "
        f"{old['windows_per_s']['sqlite']:.0f} / {old['windows_per_s']['postgresql']:.0f}; collector CPU "
        f"{c['cpu_percent_of_one_core']:.2f}% of one core."
    )


def _verdict(res: dict[str, Any]) -> str:
    """What the 100-model figures say about the 5 ms goal, and which part dominates."""
    lines = []
    for store in ("sqlite", "postgresql"):
        p = res["page_100_models"][store]
        parts = {"parse": p["parse_ms_p50"], "windows": p["window_ms_p50"], "store": p["store_ms_p50"]}
        top = max(parts, key=lambda k: parts[k])
        met = "met" if p["total_ms_p50"] < 5 else "**missed**"
        lines.append(
            f"{store}: {p['total_ms_p50']:.1f} ms, goal {met}, {top} the largest part ({parts[top]:.1f} ms)"
        )
    return (
        f"The page has {res['page_lines']} lines. Parsing takes the fast path (`collectors.parse._fast`: one strict "
        "regular expression over every `nv_*`/`slatune_*` line, only the families slatune reads turned into "
        "samples, label sets parsed once); prometheus_client's parser, which any page the fast path cannot vouch "
        f"for still goes through, takes {res['page_100_models_full_parse_ms']:.1f} ms on the same page. "
        + "; ".join(lines)
        + f". A page of the default fleet's 4 models parses in {res['page_4_models_parse_ms']:.2f} ms."
    )


def _timed(fn: Any) -> float:
    began = time.perf_counter()
    fn()
    return (time.perf_counter() - began) * 1000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def postgres_database() -> tuple[str, Any]:
    name = f"slatune_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", (admin, name)


def drop(handle: Any) -> None:
    admin, name = handle
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@app.command()
def main(
    cpu_seconds: Annotated[float, typer.Option(help="Seconds of 1 s scrapes to measure CPU over.")] = 60.0,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = Path(
        "docs/benchmarks/collect.json"
    ),
    previous: Annotated[
        Path | None, typer.Option(help="An earlier run's JSON, whose figures the section shows beside these.")
    ] = None,
) -> None:
    res: dict[str, Any] = {"benchmark": "collect", "cpus": len(os.sched_getaffinity(0))}
    res["page_lines"] = len(page_of(100).splitlines())
    four = FIXTURE.read_text()
    res["page_4_models_parse_ms"] = percentile((_timed(lambda: parse(four)) for _ in range(50)), 50)
    hundred = bump(page_of(100), 10)
    # prometheus_client's parser on the same page: what the fast path replaced (and what a page it
    # cannot vouch for still costs)
    res["page_100_models_full_parse_ms"] = percentile(
        (_timed(lambda: parse_full(hundred)) for _ in range(10)), 50
    )
    with tempfile.TemporaryDirectory() as tmp:
        res["page_100_models"] = {"sqlite": parse_and_store(f"sqlite:///{tmp}/a.db")}
        res["windows_per_s"] = {"sqlite": windows_per_second(f"sqlite:///{tmp}/b.db")}
    for what, fn in (("page_100_models", parse_and_store), ("windows_per_s", windows_per_second)):
        url, handle = postgres_database()
        try:
            res[what]["postgresql"] = fn(url)
        finally:
            drop(handle)
    res["collector_cpu"] = collector_cpu(cpu_seconds)
    p, w, c = res["page_100_models"], res["windows_per_s"], res["collector_cpu"]
    body = "\n".join([
        f"On {res['cpus']} cores.",
        "",
        "| | SQLite (WAL) | PostgreSQL 15 (loopback) |",
        "|---|---|---|",
        f"| parse + window + store, one page of 100 models, p50 (goal < 5 ms) | {p['sqlite']['total_ms_p50']:.2f} ms | {p['postgresql']['total_ms_p50']:.2f} ms |",
        f"| of which parse | {p['sqlite']['parse_ms_p50']:.2f} ms | {p['postgresql']['parse_ms_p50']:.2f} ms |",
        f"| of which windows | {p['sqlite']['window_ms_p50']:.2f} ms | {p['postgresql']['window_ms_p50']:.2f} ms |",
        f"| of which store | {p['sqlite']['store_ms_p50']:.2f} ms | {p['postgresql']['store_ms_p50']:.2f} ms |",
        f"| same, p90 | {p['sqlite']['total_ms_p90']:.2f} ms | {p['postgresql']['total_ms_p90']:.2f} ms |",
        f"| windows stored per second (100 per transaction) | {w['sqlite']:.0f} | {w['postgresql']:.0f} |",
        "",
        _verdict(res),
        "",
        f"Collector CPU at a 1 s scrape of the default fleet under the demo load: **{c['cpu_percent_of_one_core']:.2f}% "
        f"of one core** (goal < 2%): {c['cpu_s']:.2f} s of CPU over {c['seconds']:.0f} s, {c['scrapes']} scrapes, "
        f"{c['windows']} windows stored in SQLite.",
    ])  # fmt: skip
    if previous is not None:
        body += "\n\n" + _previous(json.loads(previous.read_text()), previous)
    report.write(out, "Collectors and the store", res, body, "python -m benchmarks.collect")
    print(body)


if __name__ == "__main__":
    app()
