"""Benchmark: live reconfiguration under steady mixed load.

Starts the default fleet, drives open-loop chat and guard traffic plus a bulk backlog, measures a
quiet baseline window, then applies N reconfigurations (queue delay, instances, rate-limiter
priority, queue policy) round-robin over the models while the load keeps running. Reports failed
requests by reason (goal: 0), apply time p50/p99 per path, and each model's latency during the
reconfigurations against the baseline.

    python -m benchmarks.reconfigure --count 100
"""

from __future__ import annotations

import itertools
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from benchmarks import report
from runtime.fleet import ApplyResult, Fleet
from runtime.load import LoadRun, ModelLoad, percentile, summarize, targets_for
from runtime.spec import FleetSpec, Knobs, resolve_spec

app = typer.Typer(add_completion=False)

# Start every model with a queue policy, so reloads are exercised with timeouts in force
# (the case where a naive reload rejected requests with "Request timeout expired").
START = {
    "chat-llm": Knobs(resources={"compute": 1}, queue_timeout_us=2_000_000, max_queue_size=64),
    "safety-guard": Knobs(queue_timeout_us=500_000, max_queue_size=128),
    "embeddings": Knobs(instances=1, priority=2, resources={"compute": 1}, queue_timeout_us=5_000_000),
    "reranker": Knobs(instances=1, priority=2, resources={"compute": 1}, queue_timeout_us=5_000_000),
}

LOADS = [
    ModelLoad("chat-llm", rate=2.0, words=(16, 96), max_tokens=8),
    ModelLoad("safety-guard", rate=10.0, words=(8, 48)),
    ModelLoad("embeddings", concurrency=1, batch=4, words=(16, 64)),
    ModelLoad("reranker", concurrency=1, batch=2, words=(16, 64)),
]

# Each step changes one knob of one model to the other of two values, so consecutive visits flip
# it back and forth: queue delay, instance count, priority, and queue policy.
STEPS: list[tuple[str, str, tuple[Any, Any]]] = [
    ("embeddings", "max_queue_delay_us", (2000, 0)),
    ("chat-llm", "max_queue_delay_us", (1000, 0)),
    ("reranker", "instances", (2, 1)),
    ("safety-guard", "priority", (2, 1)),
    ("embeddings", "instances", (2, 1)),
    ("chat-llm", "queue_timeout_us", (3_000_000, 2_000_000)),
    ("reranker", "priority", (3, 2)),
    ("safety-guard", "max_queue_size", (256, 128)),
    ("embeddings", "queue_timeout_us", (8_000_000, 5_000_000)),
    ("chat-llm", "priority", (2, 1)),
]


def bench_spec() -> FleetSpec:
    spec = resolve_spec(None)
    models = [m.model_copy(update={"knobs": START[m.name]}) for m in spec.models]
    return spec.model_copy(update={"models": models})


def run(count: int, baseline_s: float, settle_s: float) -> dict[str, Any]:
    spec = bench_spec()
    with tempfile.TemporaryDirectory(prefix="slatune-bench-") as tmp, Fleet(spec, Path(tmp)) as fleet:
        targets = targets_for(spec, lambda s: fleet.endpoints(s).grpc)
        budget_s = baseline_s + count * 8 + settle_s + 60
        load = LoadRun(LOADS, targets, duration_s=budget_s, max_requests=200_000, seed=1).start()
        time.sleep(baseline_s)
        reconf_began = time.monotonic()
        results: list[ApplyResult] = []
        visits: dict[int, int] = {}
        for i, step in zip(range(count), itertools.cycle(range(len(STEPS)))):
            model, knob, values = STEPS[step]
            visits[step] = visits.get(step, 0) + 1
            value = values[(visits[step] - 1) % 2]
            results.append(fleet.apply(model, **{knob: value}))
            print(f"[{i + 1:3d}/{count}] {model:13s} {knob}={value!s:<9} {results[-1].path:9s} "
                  f"{results[-1].seconds:.2f} s   failed so far: {sum(r.error is not None for r in load.records)}",
                  flush=True)
        reconf_ended = time.monotonic()
        time.sleep(settle_s)
        load.stop()
        final = load.join()

    base_start = load._started_at or reconf_began
    slas = {m.name: m.sla for m in spec.models}
    baseline = summarize([r for r in load.records if r.started < reconf_began], reconf_began - base_start, slas)
    during_records = [r for r in load.records if reconf_began <= r.started < reconf_ended]
    during = summarize(during_records, reconf_ended - reconf_began, slas)
    by_path: dict[str, list[float]] = {}
    for r in results:
        by_path.setdefault(r.path, []).append(r.seconds)
    applied = [r.seconds for r in results if r.path != "unchanged"]

    def lat(stats: Any) -> float | None:
        return stats.ttft_p99_ms if stats.ttft_p99_ms is not None else stats.latency_p99_ms

    return {
        "benchmark": "reconfigure",
        "host": {"cpus": _cpus(), "machine": platform.machine(), "python": platform.python_version()},
        "reconfigurations": len(results),
        "requests": final.sent,
        "failed_requests": final.failed,
        "failed_by_reason": {m: s.failed for m, s in final.models.items() if s.failed},
        "error_examples": final.errors,
        "apply_s": {
            "p50": percentile(applied, 50),
            "p99": percentile(applied, 99),
            "by_path": {p: {"count": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                        for p, v in by_path.items()},
        },
        "latency_p99_ms": {
            m: {"baseline": lat(baseline[m]) if m in baseline else None, "during": lat(during[m]) if m in during else None}
            for m in spec.model_names
        },
        "load": [{"model": ld.model, "rate": ld.rate, "concurrency": ld.concurrency, "batch": ld.batch} for ld in LOADS],
        "duration_s": final.duration_s,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def markdown(res: dict[str, Any]) -> str:
    a = res["apply_s"]
    lines = [
        f"Default fleet, {res['host']['cpus']} cores, {res['reconfigurations']} reconfigurations under steady "
        f"mixed load ({res['requests']} requests in {res['duration_s']:.0f} s).",
        "",
        f"- **Failed requests: {res['failed_requests']}** (goal 0)"
        + (f" — by reason: {res['failed_by_reason']}" if res["failed_requests"] else ""),
        f"- Apply time: p50 {a['p50']:.2f} s, p99 {a['p99']:.2f} s",
    ]
    for path, s in sorted(a["by_path"].items()):
        lines.append(f"  - {path}: {s['count']} applies, p50 {s['p50']:.2f} s, p99 {s['p99']:.2f} s")
    lines += ["", "| model | p99 baseline (ms) | p99 during reconfigurations (ms) |", "|---|---|---|"]
    for m, v in res["latency_p99_ms"].items():
        lines.append(f"| {m} | {report.num(v['baseline'])} | {report.num(v['during'])} |")
    lines.append("")
    lines.append("chat-llm's figure is time to first token; the others' whole-request latency.")
    return "\n".join(lines)


@app.command()
def main(
    count: int = typer.Option(100, help="Reconfigurations to apply."),
    baseline_s: float = typer.Option(20.0, help="Quiet seconds measured before the first reconfiguration."),
    settle_s: float = typer.Option(5.0, help="Seconds of load after the last one."),
    out: Path = typer.Option(Path("docs/benchmarks/reconfigure.json"), help="Where the JSON figures go."),
) -> None:
    res = run(count, baseline_s, settle_s)
    report.write(out, "Live reconfiguration", res, markdown(res), "python -m benchmarks.reconfigure")
    print(json.dumps({k: res[k] for k in ("reconfigurations", "requests", "failed_requests", "apply_s")}, indent=2))


if __name__ == "__main__":
    app()
