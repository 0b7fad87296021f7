"""The search space: every knob the spec bounds with room to move, as named integer dimensions.

Pure. A candidate is a flat mapping of parameter names (`embeddings.instances`,
`reranker.resources.compute`) to integers, as a sampler suggests them; `knobs_from_params` turns
it into knobs for each model, starting from what runs now for anything it leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from domain.spec import KNOB_NAMES, FleetSpec, IntRange, Knobs


@dataclass(frozen=True)
class Dimension:
    name: str  # "<model>.<knob>" or "<model>.resources.<name>"
    model: str
    knob: str
    low: int
    high: int


def search_space(spec: FleetSpec, models: Iterable[str] | None = None) -> list[Dimension]:
    """The dimensions of the models in scope (all by default), in a stable order."""
    scope = set(spec.model_names if models is None else models)
    unknown = scope - set(spec.model_names)
    if unknown:
        raise KeyError(
            f"unknown model(s) {', '.join(sorted(unknown))} (fleet has: {', '.join(spec.model_names)})"
        )
    dims = []
    for m in spec.models:
        if m.name not in scope:
            continue
        ranges: list[tuple[str, IntRange | None]] = [(knob, getattr(m.bounds, knob)) for knob in KNOB_NAMES]
        ranges += [(f"resources.{res}", rng) for res, rng in sorted(m.bounds.resources.items())]
        for knob, rng in ranges:
            if rng is not None and rng.low < rng.high:
                dims.append(Dimension(f"{m.name}.{knob}", m.name, knob, rng.low, rng.high))
    return dims


def knobs_from_params(current: Mapping[str, Knobs], params: Mapping[str, int]) -> dict[str, Knobs]:
    """Each model's knobs with the candidate's values laid over what runs now."""
    changes: dict[str, dict[str, int]] = {}
    resources: dict[str, dict[str, int]] = {}
    for name, value in params.items():
        model, _, knob = name.partition(".")
        if model not in current:
            raise KeyError(f"parameter {name!r}: unknown model {model!r}")
        if knob.startswith("resources."):
            resources.setdefault(model, dict(current[model].resources))[knob.split(".", 1)[1]] = int(value)
        elif knob in KNOB_NAMES:
            changes.setdefault(model, {})[knob] = int(value)
        else:
            raise KeyError(f"parameter {name!r}: unknown knob {knob!r}")
    out = dict(current)
    for model in set(changes) | set(resources):
        update: dict[str, object] = dict(changes.get(model, {}))
        if model in resources:
            update["resources"] = resources[model]
        out[model] = current[model].with_values(update)
    return out


def params_from_knobs(dims: Iterable[Dimension], knobs: Mapping[str, Knobs]) -> dict[str, int]:
    """The candidate that describes `knobs` (to measure a known configuration, e.g. the baseline)."""
    out = {}
    for d in dims:
        k = knobs[d.model]
        if d.knob.startswith("resources."):
            out[d.name] = k.resources.get(d.knob.split(".", 1)[1], 0)
        else:
            out[d.name] = k.value(d.knob)
    return out


def protective_params(spec: FleetSpec, dims: Iterable[Dimension], start: Mapping[str, int]) -> dict[str, int]:
    """The safe corner of the space, measured right after the baseline: latency-critical models
    take the fewest rate-limiter tokens and the highest priority (lowest value) their bounds
    allow, bulk models run their fewest instances at their lowest compute priority; everything
    else as in `start`. Triton's rate
    limiter serves its queue head-first, so a latency-critical model that needs a token waits
    behind bulk instances that hold them; this corner is where an SLA is most likely kept, and the
    sampler explores for goodput from a feasible point rather than hoping to stumble on one."""
    out = dict(start)
    for d in dims:
        role = spec.model(d.model).role
        if (role == "latency-critical" and (d.knob == "priority" or d.knob.startswith("resources."))) or (
            role == "bulk" and d.knob == "instances"
        ):
            out[d.name] = d.low
        elif role == "bulk" and d.knob == "compute_priority":
            out[d.name] = d.high
    return out
