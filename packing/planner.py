"""The packing planner: place an inventory's models on the fewest devices, then balance the headroom.

Each model's reserved instances (`PlannedModel.min_instances`) go on one device; a device holds
what fits in its memory budget and what its co-location rules allow. OR-Tools CP-SAT solves it in
two phases: the fewest devices (hinted with first-fit decreasing), then, with that count fixed,
the smallest share of the fullest device, so that every device keeps room for the tuner to add
instances. Rules are solver literals: one that contradicts the others is named from CP-SAT's
infeasible core, and the reasoning says which rule forced which split by solving without it.

Pure: an inventory and the learned rules in, a `Plan` out; `fleet_spec` turns a plan into the
fleet spec that `slatune up` runs, one server per device.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ortools.sat.python import cp_model

from domain.spec import FleetSpec, parse_spec
from packing.inventory import Inventory, PlannedModel

RuleKind = Literal["apart", "whole_device", "device_class", "learned"]
SCALE = 100
"""Memory in the solver is integral: hundredths of a GB."""
RELAX_MOST = 16
"""The reasoning re-solves without each rule only up to this many rules."""


class PlanError(ValueError):
    """An inventory no placement satisfies; the message names the model and the rule."""


@dataclass(frozen=True)
class LearnedRule:
    """Two models measured unable to share a device while an SLA held (from the store)."""

    model_a: str
    model_b: str
    evidence: str


@dataclass(frozen=True)
class Rule:
    key: str
    """How the operator wrote it, e.g. `chat-llm.placement.apart_from[llm]`."""
    kind: RuleKind
    model: str
    apart: tuple[str, ...] = ()
    """The models it keeps off `model`'s device (apart and learned rules)."""
    pool: str | None = None
    """The device class it pins to (device_class rules)."""


@dataclass(frozen=True)
class Device:
    name: str
    pool: str
    memory_gb: float


@dataclass(frozen=True)
class Plan:
    inventory: str
    placement: dict[str, str]
    """Model name to device name."""
    instances: dict[str, int]
    devices: tuple[Device, ...]
    """The devices used, in order."""
    memory_used_gb: dict[str, float]
    lower_bound: int
    """Devices by memory alone: the reserved memory over the largest device's, rounded up."""
    proven_bound: int
    """No placement uses fewer devices: the memory bound, or what the solver proved, if higher."""
    naive: int
    """One device per model."""
    optimal: bool
    """The device count is proven the fewest (not only the best found in the time limit)."""
    solve_s: float
    reasons: tuple[str, ...] = field(default=())

    def models_on(self, device: str) -> list[str]:
        return [m for m, d in self.placement.items() if d == device]


def rules_of(inventory: Inventory, learned: Iterable[LearnedRule] = ()) -> list[Rule]:
    """Every co-location rule of the inventory, and the learned ones between its models."""
    rules: list[Rule] = []
    models = inventory.models
    for m in models:
        p = m.placement
        if p.device_class is not None:
            rules.append(
                Rule(
                    f"{m.name}.placement.device_class={p.device_class}",
                    "device_class",
                    m.name,
                    pool=p.device_class,
                )
            )
        if p.whole_device:
            rules.append(Rule(f"{m.name}.placement.whole_device", "whole_device", m.name))
        for target in p.apart_from:
            others = tuple(
                o.name for o in models if o.name != m.name and (o.name == target or target in o.tags)
            )
            if others:
                rules.append(Rule(f"{m.name}.placement.apart_from[{target}]", "apart", m.name, apart=others))
    names = {m.name for m in models}
    for r in learned:
        if r.model_a in names and r.model_b in names and r.model_a != r.model_b:
            rules.append(
                Rule(
                    f"learned: {r.model_a} cannot share with {r.model_b} ({r.evidence})",
                    "learned",
                    r.model_a,
                    apart=(r.model_b,),
                )
            )
    return rules


def _check_sizes(inventory: Inventory) -> None:
    """A model no allowed device can hold fails here, named, before any solving."""
    for m in inventory.models:
        pools = [inventory.pool(m.placement.device_class)] if m.placement.device_class else inventory.devices
        largest = max(pools, key=lambda p: p.memory_gb)
        if m.reserved_gb > largest.memory_gb + 1e-9:
            where = (
                f"device class {largest.name!r} (rule {m.name}.placement.device_class)"
                if m.placement.device_class
                else f"any device (largest: {largest.name!r})"
            )
            raise PlanError(
                f"model {m.name!r}: {m.min_instances} instance(s) x {m.memory_gb_per_instance:g} GB = "
                f"{m.reserved_gb:g} GB is more than {where} holds ({largest.memory_gb:g} GB)"
            )


def _first_fit(inventory: Inventory, rules: Sequence[Rule]) -> list[tuple[str, list[str]]] | None:
    """First-fit decreasing by reserved memory: a feasible start for the solver and a cap on the
    devices it needs, or None when it fails (the solver then decides alone)."""
    apart = {frozenset((r.model, o)) for r in rules for o in r.apart}
    whole = {r.model for r in rules if r.kind == "whole_device"}
    bins: list[tuple[str, list[str], float]] = []
    used_per_pool = dict.fromkeys((p.name for p in inventory.devices), 0)
    for m in sorted(inventory.models, key=lambda m: -m.reserved_gb):
        allowed = (
            [m.placement.device_class] if m.placement.device_class else [p.name for p in inventory.devices]
        )
        for i, (pool, names, free) in enumerate(bins):
            if (
                pool in allowed
                and free >= m.reserved_gb - 1e-9
                and m.name not in whole
                and not any(n in whole for n in names)
                and not any(frozenset((m.name, n)) in apart for n in names)
            ):
                bins[i] = (pool, [*names, m.name], free - m.reserved_gb)
                break
        else:
            fits = [
                p
                for p in inventory.devices
                if p.name in allowed
                and p.memory_gb >= m.reserved_gb - 1e-9
                and used_per_pool[p.name] < p.count
            ]
            if not fits:
                return None
            chosen = max(fits, key=lambda p: p.memory_gb)
            used_per_pool[chosen.name] += 1
            bins.append((chosen.name, [m.name], chosen.memory_gb - m.reserved_gb))
    return [(pool, names) for pool, names, _ in bins]


@dataclass
class _Model:
    """One CP-SAT model of the placement; rules are literals, so they can be assumed or dropped."""

    model: cp_model.CpModel
    x: dict[tuple[int, int], cp_model.IntVar]
    used: list[cp_model.IntVar]
    load: list[cp_model.LinearExpr]
    rule_lits: list[cp_model.IntVar]


def _build(models: Sequence[PlannedModel], devices: Sequence[Device], rules: Sequence[Rule]) -> _Model:
    cp = cp_model.CpModel()
    index = {m.name: i for i, m in enumerate(models)}
    need = [math.ceil(m.reserved_gb * SCALE - 1e-6) for m in models]
    cap = [math.floor(d.memory_gb * SCALE + 1e-6) for d in devices]
    # Devices of a pool are alike, so a placement can be relabelled until the k-th largest model
    # sits on one of its pool's first k+1 devices: only those variables exist.
    rank = {i: k for k, i in enumerate(sorted(range(len(models)), key=lambda i: (-need[i], i)))}
    slot = [sum(1 for e in devices[:j] if e.pool == d.pool) for j, d in enumerate(devices)]
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    for i in range(len(models)):
        for j in range(len(devices)):
            if need[i] <= cap[j] and slot[j] <= rank[i]:
                x[i, j] = cp.NewBoolVar(f"x{i}_{j}")
        cp.AddExactlyOne(x[i, j] for j in range(len(devices)) if (i, j) in x)
    used = [cp.NewBoolVar(f"used{j}") for j in range(len(devices))]
    load = []
    for j, d in enumerate(devices):
        here = [(i, x[i, j]) for i in range(len(models)) if (i, j) in x]
        for _, v in here:
            cp.AddImplication(v, used[j])
        expr = cp_model.LinearExpr.WeightedSum([v for _, v in here], [need[i] for i, _ in here])
        cp.Add(expr <= cap[j] * used[j])
        load.append(expr)
        # Devices of a pool are alike: use them in order.
        if j + 1 < len(devices) and devices[j + 1].pool == d.pool:
            cp.AddImplication(used[j + 1], used[j])
    cp.Add(sum(used) >= math.ceil(sum(need) / max(cap)))  # memory's bound, to prove optimality sooner
    lits = []
    for k, r in enumerate(rules):
        lit = cp.NewBoolVar(f"rule{k}")
        lits.append(lit)
        if r.kind == "device_class":
            i = index[r.model]
            for j, d in enumerate(devices):
                if d.pool != r.pool and (i, j) in x:
                    cp.AddImplication(lit, x[i, j].Not())
        else:  # nothing (whole_device) or none of `apart` beside the model, wherever it goes
            i = index[r.model]
            kept = (
                [o for o in range(len(models)) if o != i]
                if r.kind == "whole_device"
                else [index[o] for o in r.apart]
            )
            for j in range(len(devices)):
                others = [x[o, j] for o in kept if (o, j) in x]
                if (i, j) in x and others:
                    cp.Add(sum(others) == 0).OnlyEnforceIf([lit, x[i, j]])
    return _Model(cp, x, used, load, lits)


def _solver(time_limit_s: float, workers: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, time_limit_s)
    solver.parameters.num_workers = workers
    return solver


def _devices_for(inventory: Inventory, cap: int) -> list[Device]:
    out = []
    for p in inventory.devices:
        out += [Device(f"{p.name}-{k}", p.name, p.memory_gb) for k in range(min(p.count, cap))]
    return out


@dataclass(frozen=True)
class _Solved:
    status: int
    count: int | None
    """Devices used by the best placement found, None when none was."""
    bound: int
    """No placement uses fewer devices (CP-SAT's proven bound)."""
    x: dict[tuple[int, int], int]


def _fewest(
    models: Sequence[PlannedModel],
    devices: Sequence[Device],
    rules: Sequence[Rule],
    on: Sequence[bool],
    time_limit_s: float,
    workers: int,
    hint: dict[tuple[int, int], int] | None = None,
    floor: int = 0,
) -> _Solved:
    """The fewest devices with the rules marked `on` enforced; `floor`, a bound known to hold, lets
    the solver stop as soon as it reaches it."""
    built = _build(models, devices, rules)
    built.model.Add(sum(built.used) >= floor)
    for lit, enforced in zip(built.rule_lits, on, strict=True):
        built.model.Add(lit == int(enforced))
    if hint:
        for key, v in built.x.items():
            built.model.AddHint(v, hint.get(key, 0))
    built.model.Minimize(sum(built.used))
    solver = _solver(time_limit_s, workers)
    status = solver.Solve(built.model)
    bound = math.ceil(solver.BestObjectiveBound() - 1e-6) if status != cp_model.INFEASIBLE else 0
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Solved(status, None, bound, {})
    x = {key: solver.Value(v) for key, v in built.x.items()}
    return _Solved(status, round(solver.ObjectiveValue()), bound, x)


def plan(
    inventory: Inventory,
    learned: Iterable[LearnedRule] = (),
    *,
    time_limit_s: float = 2.0,
    workers: int | None = None,
    explain: bool = True,
) -> Plan:
    """Place `inventory` on the fewest devices; PlanError names the model and rule when none fits.
    `time_limit_s` bounds the two solves together (the reasoning's re-solves come on top, each
    with a fraction of it); `workers` defaults to the host's cores."""
    started = time.perf_counter()
    workers = workers or min(8, os.cpu_count() or 1)
    _check_sizes(inventory)
    rules = rules_of(inventory, learned)
    models = inventory.models
    ffd = _first_fit(inventory, rules)
    devices = _devices_for(inventory, len(ffd) if ffd is not None else len(models))
    if not devices:
        raise PlanError("the inventory offers no devices")
    hint: dict[tuple[int, int], int] = {}
    if ffd is not None:
        slots: dict[str, list[int]] = {}
        for j, d in enumerate(devices):
            slots.setdefault(d.pool, []).append(j)
        index = {m.name: i for i, m in enumerate(models)}
        for pool, names in ffd:
            j = slots[pool].pop(0)
            hint.update({(index[n], j): 1 for n in names})
    # First phase: the fewest devices. First-fit decreasing's placement is the incumbent the solver
    # must beat in its time; what it proves bounds the count from below.
    floor = max(lower_bound(inventory), rules_bound(inventory, rules))
    solved = _fewest(models, devices, rules, [True] * len(rules), time_limit_s * 0.5, workers, hint, floor)
    if solved.count is None and ffd is None:
        if solved.status == cp_model.INFEASIBLE:
            raise PlanError(_infeasible_reason(inventory, models, devices, rules))
        raise PlanError(
            f"no placement found in {time_limit_s:g} s; give the planner more time (--time-limit)"
        )
    if solved.count is not None and (ffd is None or solved.count <= len(ffd)):
        count, x_values = solved.count, solved.x
    else:
        count, x_values = len(ffd or ()), hint
    bound = max(floor, solved.bound)
    # Second phase: the same count, the fullest device as empty as can be (in thousandths).
    balanced = _build(models, devices, rules)
    for lit in balanced.rule_lits:
        balanced.model.Add(lit == 1)
    balanced.model.Add(sum(balanced.used) <= count)
    fullest = balanced.model.NewIntVar(0, 1000, "fullest")
    for j, d in enumerate(devices):
        balanced.model.Add(1000 * balanced.load[j] <= fullest * math.floor(d.memory_gb * SCALE + 1e-6))
    for key, v in balanced.x.items():
        balanced.model.AddHint(v, x_values.get(key, 0))
    balanced.model.Minimize(fullest)
    # Balance is the lesser aim: a short search from the first phase's placement, rarely proven.
    remaining = time_limit_s - (time.perf_counter() - started)
    solver2 = _solver(min(max(0.1, remaining - 0.1), time_limit_s * 0.2), workers)
    if solver2.Solve(balanced.model) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        x_values = {key: solver2.Value(v) for key, v in balanced.x.items()}
    solve_s = time.perf_counter() - started

    placed = {models[i].name: devices[j] for (i, j), v in x_values.items() if v}
    order = [d for d in devices if any(p.name == d.name for p in placed.values())]
    result = Plan(
        inventory=inventory.name,
        placement={m.name: placed[m.name].name for m in models},
        instances={m.name: m.min_instances for m in models},
        devices=tuple(order),
        memory_used_gb={
            d.name: round(sum(m.reserved_gb for m in models if placed[m.name].name == d.name), 6)
            for d in order
        },
        lower_bound=lower_bound(inventory),
        proven_bound=bound,
        naive=len(models),
        optimal=count <= bound,
        solve_s=solve_s,
    )
    if not explain:
        return result
    reasons = _reasons(inventory, result, rules, devices, time_limit_s, workers)
    return Plan(**{**vars(result), "reasons": tuple(reasons)})


def rules_bound(inventory: Inventory, rules: Sequence[Rule]) -> int:
    """A bound the rules give: each whole-device model takes a device alone, and the others need at
    least their memory's worth of devices and one device per model of a group that are all kept
    apart from each other (a clique, found greedily: any clique bounds)."""
    whole = {r.model for r in rules if r.kind == "whole_device"}
    rest = [m for m in inventory.models if m.name not in whole]
    if not rest:
        return len(whole)
    largest = max(p.memory_gb for p in inventory.devices)
    by_memory = math.ceil(sum(m.reserved_gb for m in rest) / largest - 1e-9)
    apart = {frozenset((r.model, o)) for r in rules for o in r.apart}
    clique: list[str] = []
    for m in sorted(rest, key=lambda m: -sum(frozenset((m.name, o.name)) in apart for o in rest)):
        if all(frozenset((m.name, c)) in apart for c in clique):
            clique.append(m.name)
    return len(whole) + max(by_memory, len(clique))


def lower_bound(inventory: Inventory) -> int:
    total = sum(m.reserved_gb for m in inventory.models)
    largest = max(p.memory_gb for p in inventory.devices)
    return max(1, math.ceil(total / largest - 1e-9))


def _infeasible_reason(
    inventory: Inventory, models: Sequence[PlannedModel], devices: Sequence[Device], rules: Sequence[Rule]
) -> str:
    """Which rules contradict each other, from CP-SAT's core of assumed rule literals."""
    built = _build(models, devices, rules)
    built.model.AddAssumptions(built.rule_lits)
    solver = _solver(10.0, 1)  # cores come from the single-worker search
    status = solver.Solve(built.model)
    pools = ", ".join(f"{p.count} x {p.name} ({p.memory_gb:g} GB)" for p in inventory.devices)
    if status == cp_model.INFEASIBLE:
        core = [rules[built.rule_lits.index(lit)] for lit in _core_literals(solver, built.rule_lits)]
        if core:
            named = "; ".join(r.key for r in core)
            return f"no placement on the devices offered ({pools}): these rules contradict each other there: {named}"
    return f"no placement on the devices offered ({pools}) holds the models' reserved memory"


def _core_literals(solver: cp_model.CpSolver, lits: Sequence[cp_model.IntVar]) -> list[cp_model.IntVar]:
    by_index = {lit.Index(): lit for lit in lits}
    return [by_index[i] for i in solver.SufficientAssumptionsForInfeasibility() if i in by_index]


def _reasons(
    inventory: Inventory,
    result: Plan,
    rules: Sequence[Rule],
    devices: Sequence[Device],
    time_limit_s: float,
    workers: int,
) -> list[str]:
    """Why the plan looks as it does: the memory bound, each rule where it shaped the placement, and,
    when the plan needs more devices than memory alone, which rule costs how many."""
    total = sum(m.reserved_gb for m in inventory.models)
    largest = max(p.memory_gb for p in inventory.devices)
    out = [
        f"memory: {total:g} GB reserved (minimum instances x memory per instance) over devices of at most "
        f"{largest:g} GB: at least {result.lower_bound} device(s); one per model would be {result.naive}"
    ]
    where = result.placement
    apart: dict[frozenset[str], list[str]] = {}
    for r in rules:
        for other in r.apart:
            apart.setdefault(frozenset((r.model, other)), []).append(r.key)
    for pair, keys in apart.items():
        a, b = sorted(pair)
        out.append(f"{a} ({where[a]}) and {b} ({where[b]}) kept apart by {'; '.join(keys)}")
    for r in rules:
        if r.kind == "whole_device":
            out.append(f"{r.model} has {where[r.model]} to itself by {r.key}")
        elif r.kind == "device_class":
            out.append(f"{r.model} on a {r.pool} device ({where[r.model]}) by {r.key}")
    used = len(result.devices)
    if used > result.lower_bound:
        models = inventory.models
        costly = []
        for k, r in enumerate(rules[:RELAX_MOST]):
            on = [i != k for i in range(len(rules))]
            relaxed = _fewest(models, devices, rules, on, time_limit_s / 4, workers).count
            if relaxed is not None and relaxed < used:
                costly.append(f"{r.key} forces the split: without it {relaxed} device(s) would do")
        if not costly and rules:
            free = _fewest(models, devices, rules, [False] * len(rules), time_limit_s / 4, workers).count
            if free is not None and free < used:
                costly.append(f"the rules together force the split: without any, {free} device(s) would do")
        out += costly or [
            f"{used} devices, not {result.lower_bound}: the models' sizes do not pack into fewer (bin packing)"
        ]
    if not result.optimal:
        out.append(
            f"{used} device(s) is the best found in the time limit; no placement uses fewer than {result.proven_bound}"
        )
    return out


def fleet_spec(inventory: Inventory, result: Plan, devices: Sequence[Device] | None = None) -> FleetSpec:
    """The planned fleet: the devices used (those of `devices` only, when given), one server each,
    each model on its device's server, starting at its reserved instances."""
    chosen = list(devices if devices is not None else result.devices)
    pool_rank: dict[str, int] = {}
    device_specs, server_specs = [], []
    for d in result.devices:
        rank = pool_rank.get(d.pool, 0)
        pool_rank[d.pool] = rank + 1
        if d not in chosen:
            continue
        pool = inventory.pool(d.pool)
        spec: dict[str, object] = {"name": d.name, "kind": pool.kind, "memory_gb": pool.memory_gb}
        if pool.kind == "gpu":
            spec["index"] = rank
        if pool.cores_per_device is not None:
            n = pool.cores_per_device
            spec["cores"] = list(range(rank * n, rank * n + n))
        device_specs.append(spec)
        server_specs.append(
            {"name": server_name(d.name), "rate_limit_resources": dict(pool.rate_limit_resources)}
        )
    names = {d.name for d in chosen}
    models = []
    for m in inventory.models:
        device = result.placement[m.name]
        if device not in names:
            continue
        data = m.model_dump(mode="json", exclude={"placement"}, exclude_defaults=True)
        data["knobs"] = {**data.get("knobs", {}), "instances": result.instances[m.name]}
        models.append({**data, "server": server_name(device), "device": device})
    data = {"name": inventory.name, "devices": device_specs, "servers": server_specs, "models": models}
    if inventory.tritonserver is not None:
        data["tritonserver"] = str(inventory.tritonserver)
    return parse_spec(data, f"plan of {inventory.name}")


def server_name(device: str) -> str:
    return f"triton-{device}"


def plan_json(result: Plan) -> dict[str, object]:
    """The plan as the CLI's --json, the benchmark and the API give it."""
    return {
        "inventory": result.inventory,
        "devices": len(result.devices),
        "lower_bound": result.lower_bound,
        "proven_bound": result.proven_bound,
        "naive": result.naive,
        "optimal": result.optimal,
        "solve_s": round(result.solve_s, 4),
        "placement": [
            {"model": m, "device": d, "server": server_name(d), "instances": result.instances[m]}
            for m, d in result.placement.items()
        ],
        "memory": [
            {
                "device": d.name,
                "class": d.pool,
                "used_gb": result.memory_used_gb[d.name],
                "budget_gb": d.memory_gb,
            }
            for d in result.devices
        ],
        "reasons": list(result.reasons),
    }
