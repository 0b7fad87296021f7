"""What the packing planner takes: the device pools a team can use and its models, each with its
memory per instance, its instance range and its co-location rules, but no place yet.

An inventory reads like a fleet spec without `servers` and without each model's `server` and
`device`: `slatune plan` decides those and writes the fleet spec.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from domain.spec import (
    MAX_MODELS,
    NAME_PATTERN,
    ModelTemplate,
    SpecError,
    Strict,
    model_problems,
    read_yaml_mapping,
    resolved_source,
    validated,
)


class DevicePool(Strict):
    """Identical devices a plan may use: a class (e.g. one GPU model) and how many of it there are."""

    name: str = Field(pattern=NAME_PATTERN)
    """The device class; planned devices are named `<name>-0`, `<name>-1`, ..."""
    kind: Literal["cpu", "gpu"]
    memory_gb: PositiveFloat
    """Each device's memory budget."""
    count: PositiveInt = Field(default=MAX_MODELS, le=MAX_MODELS)
    """How many devices of this class may be used (default: as many as needed)."""
    cores_per_device: PositiveInt | None = None
    """kind cpu: each device is this many host cores, its server pinned to them (device k of the
    class gets cores k*n .. k*n+n-1)."""
    rate_limit_resources: dict[str, PositiveInt] = Field(default_factory=dict)
    """The rate limiter's totals for the server of each device of this class."""


class Colocation(Strict):
    """Where a model may run, besides memory."""

    tags: list[str] = Field(default_factory=list)
    """Names that `apart_from` rules can refer to (e.g. `llm`); the role is a tag too."""
    whole_device: bool = False
    """The model needs a device of its own: nothing else is placed beside it."""
    device_class: str | None = None
    """Pinned to the devices of this pool."""
    apart_from: list[str] = Field(default_factory=list)
    """Model names or tags this model never shares a device with, e.g. `[llm]` on a latency-critical
    LLM keeps it away from every other model tagged llm."""


class PlannedModel(ModelTemplate):
    placement: Colocation = Field(default_factory=Colocation)

    @property
    def min_instances(self) -> int:
        """The instances the plan reserves memory for, and the fleet starts with: the low end of the
        instance bounds (the tuner and the controller may add up to the high end within the
        device's budget), or the starting instances when the model has no bounds."""
        bounds = self.bounds.instances
        return max(1, bounds.low) if bounds is not None else self.knobs.instances

    @property
    def reserved_gb(self) -> float:
        return self.min_instances * self.memory_gb_per_instance

    @property
    def tags(self) -> set[str]:
        return {*self.placement.tags, self.role}


class Inventory(Strict):
    name: str = Field(default="fleet", pattern=NAME_PATTERN)
    tritonserver: Path | None = None
    devices: list[DevicePool] = Field(min_length=1, max_length=MAX_MODELS)
    models: list[PlannedModel] = Field(min_length=1, max_length=MAX_MODELS)

    def pool(self, name: str) -> DevicePool:
        return next(p for p in self.devices if p.name == name)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kind, names in (
            ("devices", [p.name for p in self.devices]),
            ("models", [m.name for m in self.models]),
        ):
            counts = Counter(names)
            out += [
                (f"{kind}[{i}].name", f"duplicate name {n!r}") for i, n in enumerate(names) if counts[n] > 1
            ]
        for i, p in enumerate(self.devices):
            if p.cores_per_device is not None and p.kind != "cpu":
                out.append((f"devices[{i}].cores_per_device", "is for kind cpu"))
        pools = {p.name for p in self.devices}
        model_names = {m.name for m in self.models}
        tags = {t for m in self.models for t in m.tags}
        for i, m in enumerate(self.models):
            at = f"models[{i}]({m.name})"
            out += [(f"{at}.{path}", why) for path, why in model_problems(m, None)]
            if m.role == "latency-critical" and m.sla is None:
                out.append((f"{at}.sla", "a latency-critical model needs an SLA"))
            rule = m.placement
            if rule.device_class is not None and rule.device_class not in pools:
                out.append(
                    (
                        f"{at}.placement.device_class",
                        f"unknown device class {rule.device_class!r} (have: {', '.join(sorted(pools))})",
                    )
                )
            if (
                rule.device_class is not None
                and m.backend == "tensorrtllm"
                and self.pool(rule.device_class).kind != "gpu"
            ):
                out.append((f"{at}.placement.device_class", "a tensorrtllm model needs a gpu class"))
            for j, other in enumerate(rule.apart_from):
                if other not in model_names and other not in tags:
                    out.append((f"{at}.placement.apart_from[{j}]", f"{other!r} names no model and no tag"))
        return out


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    inventory = validated(Inventory, data, source)
    if problems := inventory.problems():
        raise SpecError(source, problems)
    return inventory


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file (relative source paths are taken from its folder)."""
    path = Path(path)
    inventory = parse_inventory(read_yaml_mapping(path, "devices, models"), str(path))
    models = [
        m.model_copy(update={"source": resolved_source(m.source, path.parent)}) for m in inventory.models
    ]
    return inventory.model_copy(update={"models": models})


EMBEDDED_INVENTORIES = ("seed",)


def resolve_inventory(name_or_path: str | Path) -> Inventory:
    """An inventory from a path, or one shipped with slatune by name (`seed`: the seed documents'
    team of five models)."""
    if (
        isinstance(name_or_path, str)
        and name_or_path in EMBEDDED_INVENTORIES
        and not Path(name_or_path).exists()
    ):
        return load_inventory(Path(str(resources.files("packing") / "inventories" / f"{name_or_path}.yaml")))
    return load_inventory(name_or_path)
