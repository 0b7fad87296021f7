"""The latency slatune judges is what clients see: an independent client (perf_analyzer, from the
tritonclient 2.51 wheel) drives a latency-critical model and a bulk model of the default fleet at
fixed rates beside each other, with requests slatune never stamped.

perf_analyzer writes every request's send and response times (`--profile-export-file`) and the
server writes every request's trace; the test joins the two request by request. It shows that:
- every request the client sent is in slatune's windows, timed server side from its arrival;
- the p99 slatune reports from its stored windows is the exact p99 of the run's server-side
  times, to the resolution of its histogram;
- what a client sees beyond that is its own side of the wire: each request's client time holds its
  server time, and the difference is a fraction of a millisecond at the median.

slatune's p99 is not compared with the client's p99 directly: on a 2-core machine 0.5-3% of
perf_analyzer's requests wait 4-5 ms for a core after the server has sent their response (the
join shows it, docs/triton.md), so for a model of a few milliseconds the client's p99 over a few
hundred requests is decided by a handful of client-side stalls that no server-side figure can see.
The test prints both p99s and the stalls for the record."""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.fleet import fleet_collector
from collectors.trace import LATENCY_BUCKETS_MS
from controlplane.startup import register_fleet
from domain.windows import aggregate
from runtime.fleet import Fleet
from store import queries
from store.db import Store

pytestmark = pytest.mark.integration

CLIENT_SIDE_MEDIAN_MS = 1.5
"""The most a request's median client side may cost (the client library and the loopback hop: 0.3-0.6
ms over HTTP on the 2-core machine, docs/triton.md)."""
CLOCK_SLACK_MS = 0.5
"""perf_analyzer stamps requests by the wall clock, Triton by the monotonic one: the test reads the
offset between them before and after the run, and allows this much error in it."""
RUN_S = 20  # each perf_analyzer measures 4 windows of 5 s: bounded in time, and in count by the rate
LOADS = {
    # model: (requests a second, items a request), over HTTP
    "safety-guard": (20.0, 1),
    "embeddings": (6.0, 8),
}


def perf_analyzer() -> Path:
    binary = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(binary).is_file():
        pytest.fail("perf_analyzer is missing: it comes with tritonclient==2.51.0 (make setup)")
    return Path(binary)


def perf_env(work: Path) -> dict[str, str]:
    """perf_analyzer needs libb64.so.0d and libcudart.so.12: links to nvidia-pytriton's copies
    (shared/TRITON-NOTES.md)."""
    import pytriton

    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    folder = work / "palibs"
    folder.mkdir(exist_ok=True)
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        found = sorted(libs.glob(pattern))
        assert found, f"nvidia_pytriton.libs has no {pattern}"
        link = folder / name
        if not link.exists():
            link.symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{folder}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


def client_requests(export: Path) -> list[tuple[int, float]]:
    """Every request as perf_analyzer saw it: (sent, wall-clock ns; send to last response, ms)."""
    data = json.loads(export.read_text())
    out = []
    for experiment in data["experiments"]:
        for r in experiment["requests"]:
            if r.get("response_timestamps"):
                out.append((r["timestamp"], (r["response_timestamps"][-1] - r["timestamp"]) / 1e6))
    return out


def exact_quantile(values: list[float], q: float) -> float:
    """The q-quantile as perf_analyzer reports it: the value at rank ceil(q * n)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    yield s
    s.dispose()


def server_times(trace_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per model, every traced request's (arrival in the monotonic clock, ns; server time, ms), read
    here from Triton's stamps on its own, not through collectors/trace.py: HTTP_RECV_START to
    HTTP_SEND_END."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in trace_dir.iterdir():
        model, stamps = None, {}
        for record in json.loads(f.read_text()):
            model = record.get("model_name", model)
            stamps.update({s["name"]: s["ns"] for s in record.get("timestamps", ())})
        if model and {"HTTP_RECV_START", "HTTP_SEND_END"} <= stamps.keys():
            arrival = stamps["HTTP_RECV_START"]
            out.setdefault(model, []).append((arrival, (stamps["HTTP_SEND_END"] - arrival) / 1e6))
    return {m: sorted(v) for m, v in out.items()}


def joined(
    client: list[tuple[int, float]], server: list[tuple[int, float]], clock: Callable[[int], int]
) -> list[tuple[float, float]]:
    """(client ms, server ms) for each client request (sent at wall-clock ns, latency ms) with the
    server's: in order, the first not yet taken that arrived after the send (`clock` maps the wall
    clock to the monotonic one). The server may hold a request or two the client did not export
    (sent outside its measurement windows); a client request never lacks its trace. Each pair's
    server interval lies inside its client interval: the server's time is part of what the client
    saw, which also proves the join."""
    pairs = []
    taken = 0
    slack = CLOCK_SLACK_MS * 1e6
    for sent, latency in sorted(client):
        at = clock(sent)
        while taken < len(server) and server[taken][0] < at - slack:
            taken += 1
        assert taken < len(server), f"a request sent at {sent} (wall clock, ns) has no trace"
        arrival, server_ms = server[taken]
        assert arrival + server_ms * 1e6 <= at + latency * 1e6 + slack, (
            f"the trace that arrived {(arrival - at) / 1e6:.2f} ms after a send ended after its response"
        )
        pairs.append((latency, server_ms))
        taken += 1
    return pairs


def wall_minus_monotonic() -> int:
    """The wall clock less the monotonic one, ns, from the read least likely to be split by a pause."""
    reads = []
    for _ in range(20):
        before, wall, after = time.monotonic_ns(), time.time_ns(), time.monotonic_ns()
        reads.append((after - before, wall - (before + after) // 2))
    return min(reads)[1]


def bucket_of(value_ms: float) -> int:
    return bisect.bisect_left(LATENCY_BUCKETS_MS, value_ms)


def test_slatune_p99_is_the_servers_exact_p99_of_what_clients_sent(
    default_fleet: Fleet, store: Store, tmp_path: Path
) -> None:
    binary, env = perf_analyzer(), perf_env(tmp_path)
    trace_dirs = {Path(default_fleet.model_endpoints(m).trace_dir or "") for m in LOADS}
    assert len(trace_dirs) == 1 and trace_dirs != {Path()}, "the default fleet's models share a traced server"
    trace_dir = trace_dirs.pop()
    endpoints = {s.name: default_fleet.endpoints(s.name) for s in default_fleet.spec.servers}
    register_fleet(store, default_fleet.spec, endpoints)
    collector = fleet_collector(store, default_fleet.spec, endpoints, interval_s=1.0, nvml=False)
    # The baseline: windows start here, and earlier tests' traces are read and gone. The collector
    # then waits for the run's end, so that the test can keep every trace before it reads them.
    collector.tick()
    offset_before = wall_minus_monotonic()
    procs = {}
    began = time.time()
    for model, (rate, batch) in LOADS.items():
        e = default_fleet.model_endpoints(model)
        cmd = [
            str(binary),
            "-m",
            model,
            "-i",
            "http",
            "-u",
            e.http,
            f"--request-rate-range={rate}",
            "--request-distribution=constant",
            "-b",
            str(batch),
            "--shape=TEXT:1",
            "--string-length=96",
            "--measurement-mode=time_windows",
            "-p",
            str(RUN_S * 1000 // 4),
            "-r",
            "4",
            "-s",
            "1000",  # every window counts as stable: exactly four, a fixed run
            "--max-threads=4",
            f"--profile-export-file={tmp_path / model}.json",
        ]
        procs[model] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    outputs = {m: p.communicate(timeout=RUN_S + 60)[0] for m, p in procs.items()}
    for model, p in procs.items():
        assert p.returncode == 0, f"perf_analyzer on {model} failed:\n{outputs[model][-3000:]}"
    offset_after = wall_minus_monotonic()
    time.sleep(1.0)  # every trace is written
    kept = tmp_path / "traces"
    kept.mkdir()
    for f in trace_dir.iterdir():
        os.link(f, kept / f.name)
    for _ in range(2):
        collector.tick()
    servers = server_times(kept)
    with store.session() as session:
        rows = {m: [r for r in queries.windows(session, m) if r.end >= began] for m in LOADS}
    report: dict[str, dict[str, Any]] = {}
    for model in LOADS:
        client = client_requests(tmp_path / f"{model}.json")
        assert servers.get(model), f"no trace of {model}"
        pairs = joined(client, servers[model], lambda wall: wall - (offset_before + offset_after) // 2)
        windows = [r for r in rows[model] if r.requests > 0]
        agg = aggregate(windows)
        client_side = sorted(c - s for c, s in pairs)
        report[model] = {
            "client_requests": len(client),
            "traced_requests": len(servers[model]),
            "slatune_requests": agg.requests,
            "client_p99_ms": exact_quantile([c for c, _ in pairs], 0.99),
            "server_p99_ms": exact_quantile([s for _, s in servers[model]], 0.99),
            "slatune_p99_ms": agg.p99_ms,
            "client_p50_ms": exact_quantile([c for c, _ in pairs], 0.5),
            "server_p50_ms": exact_quantile([s for _, s in servers[model]], 0.5),
            "slatune_p50_ms": agg.p50_ms,
            "client_side_p50_ms": exact_quantile(client_side, 0.5),
            "clock_offset_moved_ms": (offset_after - offset_before) / 1e6,
            "client_stalls_over_3ms": sum(d > 3.0 for d in client_side),
            "sources": sorted({r.latency_source for r in windows if r.latency_source}),
        }
    print("\n" + json.dumps(report, indent=2))
    for model, r in report.items():
        # every request perf_analyzer sent is in slatune's windows, timed server side
        assert r["slatune_requests"] >= r["client_requests"], (model, r)
        assert r["sources"] == ["server"], (model, r)
        # each request's server time lies inside its client time (the join), and the client's own
        # side of the wire is small at the median: slatune leaves out nothing the server can see
        assert abs(r["clock_offset_moved_ms"]) < CLOCK_SLACK_MS, (model, r)
        assert r["client_side_p50_ms"] <= CLIENT_SIDE_MEDIAN_MS, (model, r)
        # slatune's p99 is the exact server-side p99 of the run's requests (the client's, and the
        # few it sent outside its measurement windows), to its histogram's resolution: in the
        # bucket that holds the exact figure, or a neighbour of it
        assert r["slatune_p99_ms"] is not None, (model, r)
        assert abs(bucket_of(r["slatune_p99_ms"]) - bucket_of(r["server_p99_ms"])) <= 1, (model, r)
