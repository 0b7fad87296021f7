"""Benchmark: live reconfiguration under steady mixed load, judged against a quiet baseline.

Starts the default fleet, drives open-loop chat and guard traffic plus a bulk backlog, measures a
quiet baseline window, then applies N reconfigurations (queue delay, instances, rate-limiter
priority, queue policy) round-robin over the models while the load keeps running. Reports failed
requests in the baseline and during the reconfigurations, per path (in-place, reload), per model
and by reason (goal: 0 in both), apply time p50/p99 per path, and each model's latency during the
reconfigurations against the baseline.

Every model has a queue timeout, chosen so that the quiet fleet loses no request: then a failure
while reconfiguring is the reconfiguration's. Triton 2.51's dynamic batcher is only woken for a
new request when an instance of the model is waiting for work; a request that arrives while every
instance is busy waits for the next arrival or the batcher's 500 ms re-check (the bulk models'
quiet queue p95 is 500 ms). A queue timeout below that expires on a healthy fleet, so the guard's
is 1000 ms by default (750 ms in the tighter variant), above 500 ms plus the quiet fleet's
queue-time p99.9, which the JSON records per model (`by_model.*.baseline_queue_ms`).

It runs twice: slatune's path, then a naive one without warmup (reconfigurations one at a time in
both). A naive reload serves its first batch cold (the guard's first request after a reload took
117 ms instead of 2.3 ms); the benchmark measures that directly: the first request each model
serves after each of its reconfigurations, and every model's p99 during the reconfigurations.

    python -m benchmarks.reconfigure
"""

from __future__ import annotations

import bisect
import itertools
import json
import platform
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks import report
from collectors.parse import parse
from domain.spec import FleetSpec, Knobs, resolve_spec
from domain.stats import ModelStats, Record, percentile, summarize
from runtime.fleet import ApplyResult, Fleet
from runtime.load import LoadRun, ModelLoad, targets_for

app = typer.Typer(add_completion=False)

# Start every model with a queue policy, so reloads are exercised with timeouts in force
# (the case where a naive reload rejected requests with "Request timeout expired").
START = {
    # No rate-limiter resources: Triton's limiter serves its queue head-first, so a bulk instance
    # waiting for a token holds up the guard too. Every timeout clears the quiet fleet's queue-time
    # tail at this load (up to Triton's 500 ms batcher re-check, see the docstring), so the steady
    # state loses nothing and any failure is the reconfiguration's.
    "chat-llm": Knobs(queue_timeout_us=2_000_000, max_queue_size=64),
    "safety-guard": Knobs(queue_timeout_us=1_000_000, max_queue_size=128),  # --guard-timeout-ms
    "embeddings": Knobs(instances=1, priority=2, queue_timeout_us=5_000_000),
    "reranker": Knobs(instances=1, priority=2, queue_timeout_us=5_000_000),
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


LEAD_IN_S = 5.0


def bench_spec(guard_timeout_ms: int) -> FleetSpec:
    spec = resolve_spec(None)
    start = dict(START)
    start["safety-guard"] = start["safety-guard"].model_copy(
        update={"queue_timeout_us": guard_timeout_ms * 1000}
    )
    models = [m.model_copy(update={"knobs": start[m.name]}) for m in spec.models]
    return spec.model_copy(update={"models": models})


def run(
    count: int, baseline_s: float, settle_s: float, guard_timeout_ms: int, warmup: bool = True
) -> dict[str, Any]:
    spec = bench_spec(guard_timeout_ms)
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="slatune-bench-") as tmp,
        Fleet(spec, Path(tmp), warmup=warmup) as fleet,
    ):
        startup_s = time.monotonic() - began
        targets = targets_for(spec, lambda s: fleet.endpoints(s).grpc)
        budget_s = baseline_s + count * 8 + settle_s + 60
        load = LoadRun(LOADS, targets, duration_s=budget_s, max_requests=200_000, seed=1).start()
        time.sleep(LEAD_IN_S)  # the first seconds of load are not steady yet: not measured
        baseline_began = time.monotonic()
        time.sleep(baseline_s)
        reconf_began = time.monotonic()
        queue_quantiles = _queue_quantiles_ms(fleet.endpoints(spec.servers[0].name).metrics_url)
        results: list[ApplyResult] = []
        apply_began: list[float] = []
        applied_at: list[float] = []
        knob_of: list[str] = []
        visits: dict[int, int] = {}
        for i, step in zip(range(count), itertools.cycle(range(len(STEPS)))):
            model, knob, values = STEPS[step]
            visits[step] = visits.get(step, 0) + 1
            value = values[(visits[step] - 1) % 2]
            seen = len(load.records)
            apply_began.append(time.monotonic())
            knob_of.append(knob)
            results.append(fleet.apply(model, **{knob: value}))
            applied_at.append(time.monotonic())
            new_failures = Counter(f"{r.model}:{r.error}" for r in load.records[seen:] if r.error is not None)
            print(
                f"[{i + 1:3d}/{count}] {model:13s} {knob}={value!s:<9} {results[-1].path:9s} "
                f"{results[-1].seconds:.2f} s   failed meanwhile: {dict(new_failures) or 0}",
                flush=True,
            )
        reconf_ended = time.monotonic()
        time.sleep(settle_s)
        load.stop()
        final = load.join()

    slas = {m.name: m.sla for m in spec.models}
    base_records = [r for r in load.records if baseline_began <= r.started < reconf_began]
    baseline = summarize(base_records, reconf_began - baseline_began, slas)
    during_records = [r for r in load.records if reconf_began <= r.started < reconf_ended]
    during = summarize(during_records, reconf_ended - reconf_began, slas)
    by_path: dict[str, list[float]] = {}
    for r in results:
        by_path.setdefault(r.path, []).append(r.seconds)
    applied = [r.seconds for r in results if r.path != "unchanged"]

    # Which reconfiguration each failure belongs to: the one running when the request failed (a
    # queue timeout fires after the request waited, so the send time would blame the previous one).
    blamed: dict[str, dict[str, Any]] = {"by_path": {}, "by_reconfigured_model": {}}
    groups: dict[str, list[str]] = {
        "by_path": [r.path for r in results],
        "by_reconfigured_model": [r.model for r in results],
    }
    for key, group in groups.items():
        for name in sorted(set(group)):
            blamed[key][name] = {"reconfigurations": group.count(name), "failed": 0, "failed_by_model": {}}
    for rec in during_failed(load.records, reconf_began):
        i = max(bisect.bisect_right(apply_began, rec.started + rec.latency) - 1, 0)
        for key, name in (("by_path", results[i].path), ("by_reconfigured_model", results[i].model)):
            entry = blamed[key][name]
            entry["failed"] += 1
            reasons = entry["failed_by_model"].setdefault(rec.model, {})
            reasons[rec.error] = reasons.get(rec.error, 0) + 1
    failures = [
        {
            "model": rec.model,
            "reason": rec.error,
            "sent_s": round(rec.started - reconf_began, 3),
            "failed_after_ms": round(1000 * rec.latency, 1),
            "during": f"{results[i].model} {knob_of[i]} ({results[i].path})",
        }
        for rec in during_failed(load.records, reconf_began)
        for i in [max(bisect.bisect_right(apply_began, rec.started + rec.latency) - 1, 0)]
    ]
    by_model = {
        m: {
            "sent_in_baseline": baseline[m].sent if m in baseline else 0,
            "failed_in_baseline": baseline[m].failed if m in baseline else {},
            "sent_during_reconfiguration": sum(
                r.model == m for r in load.records if r.started >= reconf_began
            ),
            "failed_during_reconfiguration": dict(
                Counter(r.error for r in during_failed(load.records, reconf_began) if r.model == m)
            ),
            # The quiet fleet's tail, what a queue timeout must clear: Triton's queue-time quantiles
            # (its summary covers about the last minute: lead-in and baseline) and the client's
            # latency of the requests that succeeded in the baseline.
            "baseline_queue_ms": queue_quantiles.get(m, {}),
            "baseline_latency_ms": _tail_ms(
                [r.latency for r in base_records if r.model == m and r.error is None]
            ),
            "baseline_ttft_ms": _tail_ms(
                [r.ttft for r in base_records if r.model == m and r.error is None and r.ttft is not None]
            ),
        }
        for m in spec.model_names
    }

    # Cold start: the first request each model served after each of its reconfigurations, against
    # that model's median in the baseline (time to first token for chat).
    first_after: dict[str, list[float]] = {}
    for result, at in zip(results, applied_at, strict=True):
        nxt = next(
            (r for r in load.records if r.model == result.model and r.started >= at and r.error is None), None
        )
        if nxt is not None:
            first_after.setdefault(result.model, []).append(
                1000 * (nxt.ttft if nxt.ttft is not None else nxt.latency)
            )

    def p50(stats: ModelStats) -> float | None:
        return stats.ttft_p50_ms if stats.ttft_p50_ms is not None else stats.latency_p50_ms

    def lat(stats: ModelStats) -> float | None:
        return stats.ttft_p99_ms if stats.ttft_p99_ms is not None else stats.latency_p99_ms

    return {
        "warmup": warmup,
        "guard_queue_timeout_ms": guard_timeout_ms,
        "host": {"cpus": _cpus(), "machine": platform.machine(), "python": platform.python_version()},
        "fleet_startup_s": startup_s,
        "reconfigurations": len(results),
        "requests": final.sent,
        "failed_requests": final.failed,
        "failed_in_lead_in": sum(r.error is not None for r in load.records if r.started < baseline_began),
        "failed_in_baseline": sum(r.error is not None for r in base_records),
        "baseline_s": reconf_began - baseline_began,
        "reconfiguring_s": reconf_ended - reconf_began + settle_s,
        "failed_during_reconfiguration": sum(
            r.error is not None for r in load.records if r.started >= reconf_began
        ),
        "failed_by_reason": {m: s.failed for m, s in final.models.items() if s.failed},
        "by_model": by_model,
        "failed_during_reconfiguration_by": blamed,
        "failures": failures,
        "failures_in_baseline": [
            {
                "model": r.model,
                "reason": r.error,
                "sent_s": round(r.started - baseline_began, 3),
                "failed_after_ms": round(1000 * r.latency, 1),
            }
            for r in base_records
            if r.error is not None
        ],
        "queue_timeouts_ms": {
            m.name: m.knobs.queue_timeout_us / 1000 for m in spec.models if m.knobs.queue_timeout_us
        },
        "error_examples": final.errors,
        "apply_s": {
            "p50": percentile(applied, 50),
            "p99": percentile(applied, 99),
            "by_path": {
                p: {"count": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                for p, v in by_path.items()
            },
        },
        "first_request_after_apply_ms": {
            m: {
                "baseline_p50": p50(baseline[m]) if m in baseline else None,
                "p50": percentile(v, 50),
                "max": max(v),
            }
            for m, v in first_after.items()
        },
        "latency_p99_ms": {
            m: {
                "baseline": lat(baseline[m]) if m in baseline else None,
                "during": lat(during[m]) if m in during else None,
            }
            for m in spec.model_names
        },
        "load": [
            {"model": ld.model, "rate": ld.rate, "concurrency": ld.concurrency, "batch": ld.batch}
            for ld in LOADS
        ],
        "duration_s": final.duration_s,
    }


def during_failed(records: list[Record], since: float) -> list[Record]:
    return [r for r in records if r.started >= since and r.error is not None]


def _tail_ms(values: list[float]) -> dict[str, float | None]:
    ms = [1000 * v for v in values]
    return {
        "count": len(ms),
        "p99": percentile(ms, 99),
        "p99.9": percentile(ms, 99.9),
        "max": max(ms) if ms else None,
    }


def _queue_quantiles_ms(metrics_url: str) -> dict[str, dict[str, float]]:
    """Each model's queue-time quantiles (ms) from Triton's summaries, which cover about a minute."""
    with urllib.request.urlopen(metrics_url, timeout=10) as page:
        scrape = parse(page.read().decode())
    return {
        m: {str(q): us / 1000 for q, us in sorted(sample.quantiles.get("queue", {}).items())}
        for m, sample in scrape.models.items()
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def label(r: dict[str, Any]) -> str:
    return "slatune (warmup)" if r["warmup"] else "naive (no warmup)"


def _reasons(by_model: dict[str, dict[str, int]]) -> str:
    """{"safety-guard": {"queue-timeout": 2}} -> "safety-guard 2 (queue-timeout)"; "0" for none."""
    parts = [
        f"{m} {sum(r.values())} ({', '.join(f'{k} {v}' if len(r) > 1 else k for k, v in r.items())})"
        for m, r in by_model.items()
        if r
    ]
    return "; ".join(parts) or "0"


def _load_text(ld: dict[str, Any]) -> str:
    if ld["rate"]:
        return f"{ld['model']} {ld['rate']:g}/s open loop"
    return f"{ld['model']} {ld['concurrency']} closed-loop worker(s) x batch {ld['batch']}"


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    res = runs["slatune"]
    timeouts = ", ".join(f"{m} {report.num(v, 0)} ms" for m, v in res["queue_timeouts_ms"].items())
    lines = [
        f"Default fleet on {res['host']['cpus']} cores: {res['reconfigurations']} reconfigurations under steady "
        "mixed load, round-robin over the models and knobs (queue delay, instances, priority, queue policy). "
        f"The fleet was up and serving {res['fleet_startup_s']:.1f} s after start. Load: "
        + ", ".join(_load_text(ld) for ld in res["load"])
        + f". Queue timeouts: {timeouts}: each above the quiet fleet's queue-time tail below, which "
        "reaches Triton's 500 ms batcher re-check (a request that arrives while the model's instances are "
        "busy waits for the next arrival or that re-check; docs/triton.md), so the quiet baseline loses "
        "none and a failure while reconfiguring is the reconfiguration's. A request counts where it was "
        "sent: in the quiet baseline "
        "(after a 5 s lead-in that is not measured) or during the reconfigurations (including the settle "
        "window after them); a failure during them is blamed on the reconfiguration running when it failed.",
        "",
        "| run | requests | failed: quiet baseline | failed: during reconfigurations | apply p50 | apply p99 | in-place p50 | reload p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.values():
        a = r["apply_s"]
        bp = a["by_path"]
        base_sent = sum(v["sent_in_baseline"] for v in r["by_model"].values())
        during_sent = sum(v["sent_during_reconfiguration"] for v in r["by_model"].values())
        lines.append(
            f"| {label(r)} | {r['requests']} | **{r['failed_in_baseline']}** of {base_sent} in "
            f"{r['baseline_s']:.0f} s | **{r['failed_during_reconfiguration']}** of {during_sent} in "
            f"{r['reconfiguring_s']:.0f} s | {a['p50']:.2f} s | {a['p99']:.2f} s | "
            f"{report.num(bp.get('in-place', {}).get('p50'), 2)} s | "
            f"{report.num(bp.get('reload', {}).get('p50'), 2)} s |"
        )
    lines += [
        "",
        "Failures during the reconfigurations, by path and by the model reconfigured (model whose "
        "requests failed, and why):",
        "",
        "| run | blamed on | reconfigurations | failed |",
        "|---|---|---|---|",
    ]
    for r in runs.values():
        by = r["failed_during_reconfiguration_by"]
        for key, what in (("by_path", "path"), ("by_reconfigured_model", "model")):
            for name, v in by[key].items():
                lines.append(
                    f"| {label(r)} | {what} {name} | {v['reconfigurations']} | {_reasons(v['failed_by_model'])} |"
                )
    lines += [
        "",
        "Per model: its queue timeout against the quiet fleet's queue-time tail (Triton's summary "
        "quantiles over about the last minute of the baseline) and the slowest request the client saw "
        "in the baseline (time to first token for chat-llm); then failed of sent requests:",
        "",
        "| model | queue timeout | quiet queue p99 / p99.9 | quiet client max | "
        + " | ".join(f"{label(r)}: baseline | during" for r in runs.values())
        + " |",
        "|---|---|---|---|" + "---|---|" * len(runs),
    ]
    for m, v in res["by_model"].items():
        q = v["baseline_queue_ms"]
        worst = v["baseline_ttft_ms"] if v["baseline_ttft_ms"]["count"] else v["baseline_latency_ms"]
        cells = []
        for r in runs.values():
            bm = r["by_model"][m]
            cells += [
                f"{sum(bm['failed_in_baseline'].values())} of {bm['sent_in_baseline']}",
                f"{sum(bm['failed_during_reconfiguration'].values())} of {bm['sent_during_reconfiguration']}",
            ]
        lines.append(
            f"| {m} | {report.num(res['queue_timeouts_ms'].get(m), 0)} ms | "
            f"{report.num(q.get('0.99'))} / {report.num(q.get('0.999'))} ms | {report.num(worst['max'])} ms | "
            + " | ".join(cells)
            + " |"
        )
    for r in runs.values():
        if r["failures_in_baseline"]:
            fails = Counter(f"{f['model']} ({f['reason']})" for f in r["failures_in_baseline"])
            lines += [
                "",
                f"{label(r)}, failed in the baseline: " + ", ".join(f"{k} x{n}" for k, n in fails.items()),
            ]
    lines += [
        "",
        "Cold start: the first request each model served after each of its reconfigurations "
        "(ms, median / worst; time to first token for chat-llm), against the model's baseline median:",
        "",
        "| model | baseline p50 | " + " | ".join(label(r) for r in runs.values()) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for m in res["first_request_after_apply_ms"]:
        cells = []
        for r in runs.values():
            v = r["first_request_after_apply_ms"].get(m)
            cells.append("-" if v is None else f"{report.num(v['p50'])} / {report.num(v['max'])}")
        lines.append(
            f"| {m} | {report.num(res['first_request_after_apply_ms'][m]['baseline_p50'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Latency impact on every model (p99 ms; time to first token for chat-llm):",
        "",
        "| model | " + " | ".join(f"{label(r)}: baseline | during" for r in runs.values()) + " |",
        "|---|" + "---|---|" * len(runs),
    ]
    for m in res["latency_p99_ms"]:
        cells = []
        for r in runs.values():
            v = r["latency_p99_ms"][m]
            cells += [report.num(v["baseline"]), report.num(v["during"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@app.command()
def main(
    count: Annotated[int, typer.Option(help="Reconfigurations to apply.")] = 100,
    baseline_s: Annotated[float, typer.Option(help="Quiet seconds measured before the first one.")] = 45.0,
    settle_s: Annotated[float, typer.Option(help="Seconds of load after the last one.")] = 5.0,
    naive: Annotated[bool, typer.Option(help="Also run the naive path (no warmup) to compare.")] = True,
    guard_timeout_ms: Annotated[
        int,
        typer.Option(
            help="The guard's queue timeout (its SLA is 20 ms; below ~600 ms Triton's 500 ms batcher "
            "re-check expires it on a quiet fleet)."
        ),
    ] = 1000,
    out: Annotated[Path | None, typer.Option(help="Where the JSON figures go.")] = None,
) -> None:
    runs = {"slatune": run(count, baseline_s, settle_s, guard_timeout_ms)}
    if naive:
        runs["naive"] = run(count, baseline_s, settle_s, guard_timeout_ms, warmup=False)
    command = f"python -m benchmarks.reconfigure --count {count} --baseline-s {baseline_s:g} --guard-timeout-ms {guard_timeout_ms}"
    command += "" if naive else " --no-naive"
    out = out or Path(f"docs/benchmarks/reconfigure-guard-{guard_timeout_ms}ms.json")
    title = f"Live reconfiguration (guard queue timeout {guard_timeout_ms} ms)"
    report.write(out, title, {"benchmark": "reconfigure", "runs": runs}, markdown(runs), command)
    for name, res in runs.items():
        keys = (
            "requests",
            "failed_in_baseline",
            "failed_during_reconfiguration",
            "failed_by_reason",
            "apply_s",
        )
        print(name, json.dumps({k: res[k] for k in keys}))


if __name__ == "__main__":
    app()
