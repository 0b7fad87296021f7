"""Benchmark: the packing planner on the seed inventory and on random inventories of 10, 50 and 200
models. For each: devices used against the lower bound by memory and against one device per model,
the bound the solver proved, whether the count is proven optimal, and the solve time (goal: optimal
or within one device of the bound, in under 2 s for 200 models).

A random inventory is drawn like a real team's, scaled up: 10% latency-critical LLMs (20-48 GB,
each kept apart from every other LLM, as the seed's chat models are), 25% small latency-critical
models (0.5-4 GB), the rest bulk models (1-16 GB, one to three instances reserved), 3% of models
needing a whole device; 80 GB devices.

    python -m benchmarks.plan [--seeds 3] [--time-limit 2]
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks import report
from packing.inventory import Inventory, parse_inventory, resolve_inventory
from packing.planner import plan

app = typer.Typer(add_completion=False)
SIZES = (10, 50, 200)
DEVICE_GB = 80.0


def random_inventory(n: int, seed: int) -> Inventory:
    rng = random.Random(seed)
    models: list[dict[str, Any]] = []
    for i in range(n):
        draw = rng.random()
        placement: dict[str, Any] = {}
        if draw < 0.10:
            role, gb, instances = "latency-critical", float(rng.choice([20, 24, 40, 48])), 1
            placement = {"tags": ["llm"], "apart_from": ["llm"]}
        elif draw < 0.35:
            role, gb, instances = "latency-critical", round(rng.uniform(0.5, 4), 2), rng.choice([1, 1, 2])
        else:
            role, gb, instances = "bulk", round(rng.uniform(1, 16), 2), rng.choice([1, 1, 2, 3])
        if rng.random() < 0.03:
            placement["whole_device"] = True
        m: dict[str, Any] = {
            "name": f"m{i:03d}",
            "role": role,
            "source": {"builtin": "embedder"},
            "memory_gb_per_instance": gb,
            "knobs": {"instances": instances},
            "placement": placement,
        }
        if role == "latency-critical":
            m["sla"] = {"metric": "latency_p99", "target_ms": 50}
        models.append(m)
    devices = [{"name": "gpu", "kind": "gpu", "memory_gb": DEVICE_GB}]
    return parse_inventory({"name": f"random-{n}-{seed}", "devices": devices, "models": models})


@app.command()
def main(
    seeds: Annotated[int, typer.Option(help="Random inventories per size.", min=1)] = 3,
    time_limit: Annotated[float, typer.Option(help="The planner's time limit per inventory (s).")] = 2.0,
    out: Annotated[Path, typer.Option()] = Path("docs/benchmarks/plan.json"),
    doc: Annotated[bool, typer.Option(help="Rewrite the section of docs/benchmarks.md.")] = True,
    previous: Annotated[
        Path | None, typer.Option(help="An earlier run's JSON, whose figures the doc shows beside these.")
    ] = None,
) -> None:
    """Plan the seed inventory and random ones; write docs/benchmarks/plan.json and the doc's section."""
    seed_inv = resolve_inventory("seed")
    seed_plan = plan(seed_inv, time_limit_s=time_limit)
    typer.echo(
        f"seed: {len(seed_plan.devices)} devices (naive {seed_plan.naive}, bound {seed_plan.lower_bound})"
    )
    sizes: dict[str, Any] = {}
    rows = []
    for n in SIZES:
        runs = []
        for s in range(seeds):
            p = plan(random_inventory(n, s), time_limit_s=time_limit, explain=False)
            runs.append(p)
            typer.echo(
                f"{n} models, seed {s}: {len(p.devices)} devices, memory bound {p.lower_bound}, proven bound "
                f"{p.proven_bound}, naive {p.naive}, {'optimal' if p.optimal else 'not proven'}, {p.solve_s:.2f} s"
            )
        worst = max(runs, key=lambda p: (len(p.devices) - p.proven_bound, p.solve_s))
        sizes[str(n)] = {
            "devices": len(runs[0].devices),
            "lower_bound": runs[0].lower_bound,
            "proven_bound": runs[0].proven_bound,
            "naive": n,
            "optimal": runs[0].optimal,
            "solve_s": round(runs[0].solve_s, 3),
            "solve_s_max": round(max(p.solve_s for p in runs), 3),
            "solve_s_median": round(statistics.median(p.solve_s for p in runs), 3),
            "optimal_runs": sum(p.optimal for p in runs),
            "most_over_proven_bound": len(worst.devices) - worst.proven_bound,
            "runs": [
                {
                    "seed": s,
                    "devices": len(p.devices),
                    "lower_bound": p.lower_bound,
                    "proven_bound": p.proven_bound,
                    "optimal": p.optimal,
                    "solve_s": round(p.solve_s, 3),
                }
                for s, p in enumerate(runs)
            ],
        }
        for s, p in enumerate(runs):
            rows.append(
                f"| {n} | {s} | {len(p.devices)} | {p.lower_bound} | {p.proven_bound} | {n} | "
                f"{'yes' if p.optimal else 'no'} | {p.solve_s:.2f} |"
            )
    figures = {
        "seed_inventory": {
            "devices": len(seed_plan.devices),
            "naive": seed_plan.naive,
            "lower_bound": seed_plan.lower_bound,
            "optimal": seed_plan.optimal,
            "placement": seed_plan.placement,
            "reasons": list(seed_plan.reasons),
        },
        "sizes": sizes,
        "time_limit_s": time_limit,
    }
    goal = all(v["most_over_proven_bound"] <= 1 and v["solve_s_max"] < 2.0 for v in sizes.values())
    body = f"""
The seed inventory (87 GB: chat-llm 40, chat-llm-v3 40, embeddings 2, reranker 4, safety-guard 1, on
80 GB devices): **{len(seed_plan.devices)} devices** instead of {seed_plan.naive} (bound by memory
{seed_plan.lower_bound}), the two chat models apart by their rule.

Random inventories ({seeds} per size; 10% LLMs kept apart from each other, 3% needing a whole device;
80 GB devices). "Proven bound": no placement uses fewer devices (the memory bound, or what CP-SAT
proved in its time, whichever is higher).

| models | seed | devices | bound by memory | proven bound | naive | optimal | solve s |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Goal (optimal, or within one device of the bound, in under 2 s for 200 models):
{"met" if goal else "missed"} on every inventory above.
{_previous(previous)}"""
    report.write(
        out,
        "Packing planner",
        figures,
        body,
        "python -m benchmarks.plan",
        **({} if doc else {"doc": Path("/dev/null")}),
    )


def _previous(path: Path | None) -> str:
    """The earlier run's figures per size, so that the doc shows the benchmark reproduces."""
    if path is None:
        return ""
    earlier = json.loads(path.read_text())
    parts = [
        f"{n} models: {v['devices']} devices (proven bound {v['proven_bound']}), "
        f"solve max {v['solve_s_max']:.2f} s, {v['optimal_runs']} of {len(v['runs'])} optimal"
        for n, v in earlier["sizes"].items()
    ]
    return f"\nThe run before ({earlier['measured_at']}, `{path}`): " + "; ".join(parts) + ".\n"


if __name__ == "__main__":
    app()
