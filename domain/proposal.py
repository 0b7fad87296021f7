"""The one proposal path: every writer of configurations (a person through the API, an alert, the
tuner's trials, restores and re-measures, the controller) asks `propose` what it may record.

Pure: the spec, what runs, what is pending, the target, who asks and the time in; the guarded
knobs of every model, what was clipped and by which rule, the memory check per device and the
models that change, or a refusal with its reason and the field at fault, out. In order:
1. the spec's hard limits (an instance asking for more rate-limiter resource than its server has):
   refused, no rail may move a limit;
2. the rails: cooldown, bounds, then the maximum step away from what runs. A return to a
   configuration measured safe (`known_safe`) skips the cooldown and the step: it is the way out of
   a broken SLA and must happen at once. Bounds always hold;
3. the memory budget of every device: a configuration that does not fit is refused whole, so it is
   never deployed.
"Nothing to change" is decided here too: a model changes when its guarded knobs differ from what
it runs, or from what is pending for it (a newer proposal overtakes a pending one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from domain.spec import (
    KNOB_NAMES,
    Bounds,
    FleetSpec,
    IntRange,
    Knobs,
    device_memory_used,
    knob_problems,
    memory_problems,
)

Actor = Literal["person", "alert", "tuner", "controller"]
ACTORS: tuple[Actor, ...] = ("person", "alert", "tuner", "controller")


@dataclass(frozen=True)
class Guardrails:
    max_step: Mapping[str, int] = field(
        default_factory=lambda: {
            "instances": 2,
            "priority": 4,
            "max_queue_delay_us": 50_000,
            "max_queue_size": 512,
            "queue_timeout_us": 5_000_000,
            "resources": 2,
            "compute_priority": 2,
            "max_batch_size": 64,
        }
    )
    """The most a knob may move in one change, away from what runs now."""
    cooldown_s: float = 0.0
    """A model changed less than this long ago keeps its knobs."""


@dataclass(frozen=True)
class Clip:
    model: str
    knob: str
    asked: Any
    got: Any
    rule: str  # "bounds", "max_step", "cooldown"


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    used_gb: float
    budget_gb: float

    @property
    def fits(self) -> bool:
        return self.used_gb <= self.budget_gb + 1e-9


@dataclass(frozen=True)
class Proposal:
    actor: Actor
    knobs: dict[str, Knobs]
    """What may run: every model of the fleet, guarded (what runs now when refused)."""
    changes: dict[str, Knobs]
    """The models to record a desired version for; empty when there is nothing to change."""
    clips: tuple[Clip, ...] = ()
    memory: dict[str, DeviceMemory] = field(default_factory=dict)
    """Each device's memory with the guarded knobs (with the asked knobs when refused)."""
    refused: str | None = None
    """Why the whole proposal was refused; nothing of it may be recorded."""
    refused_field: str | None = None
    """The field at fault, as `knobs.<knob>` (`knobs.instances` for a memory refusal)."""

    @property
    def accepted(self) -> bool:
        return self.refused is None


def _clip(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _guard_value(
    model: str, knob: str, asked: int, base: int, rng: IntRange | None, step: int | None, clips: list[Clip]
) -> int:
    """One knob: into its bounds (a knob without bounds stays at `base`), then at most `step`
    away from `base`. Each clip is recorded with the rule that made it."""
    bounded = base if rng is None else _clip(asked, rng.low, rng.high)
    if bounded != asked:
        clips.append(Clip(model, knob, asked, bounded, "bounds"))
    stepped = bounded if step is None else _clip(bounded, base - step, base + step)
    if stepped != bounded:
        clips.append(Clip(model, knob, bounded, stepped, "max_step"))
    return stepped


def _bounds(bounds: Bounds, knob: str, want: Knobs) -> IntRange | None:
    """A knob's bounds; none for a max batch size left to the model's own config (0), whose value
    the runtime knows and checks, not the spec."""
    if knob == "max_batch_size" and want.max_batch_size == 0:
        return IntRange(low=0, high=0)
    return getattr(bounds, knob)  # type: ignore[no-any-return]


def _memory(spec: FleetSpec, knobs: Mapping[str, Knobs]) -> dict[str, DeviceMemory]:
    used = device_memory_used(spec, knobs)
    return {d.name: DeviceMemory(d.name, used[d.name], d.memory_gb) for d in spec.devices}


def propose(
    spec: FleetSpec,
    current: Mapping[str, Knobs],
    target: Mapping[str, Knobs],
    *,
    actor: Actor,
    now: float,
    pending: Mapping[str, Knobs] | None = None,
    rails: Guardrails | None = None,
    last_change: Mapping[str, float] | None = None,
    known_safe: bool = False,
) -> Proposal:
    """What `actor` may record of `target` (knobs for some models) now. `current` is what every
    model runs; `pending` the newest desired knobs not applied yet; `last_change` when each model
    last changed (for the cooldown)."""
    rails = rails or Guardrails()
    pending = pending or {}
    last_change = last_change or {}
    unknown = sorted(set(target) - set(spec.model_names))
    if unknown:
        why = f"unknown model(s) {', '.join(unknown)}"
        return Proposal(
            actor, dict(current), {}, (), _memory(spec, current), refused=why, refused_field="model"
        )
    for name, want in sorted(target.items()):
        for path, why in knob_problems(spec.server(spec.model(name).server), want):
            return Proposal(
                actor, dict(current), {}, (), _memory(spec, current), refused=f"{name}: {path}: {why}",
                refused_field=path,
            )  # fmt: skip
    out: dict[str, Knobs] = dict(current)
    clips: list[Clip] = []
    for name, asked in target.items():
        m = spec.model(name)
        have = current[name]
        want = asked.resolved(have)
        if want == have:
            continue
        if not known_safe and now - last_change.get(name, float("-inf")) < rails.cooldown_s:
            clips.append(Clip(name, "*", want, have, "cooldown"))
            continue
        step = {} if known_safe else rails.max_step
        values: dict[str, Any] = {
            knob: _guard_value(
                name, knob, want.value(knob), have.value(knob), _bounds(m.bounds, knob, want),
                step.get(knob), clips,
            )
            for knob in KNOB_NAMES
        }  # fmt: skip
        resources = {
            res: _guard_value(
                name, f"resources.{res}", want.resources.get(res, 0), have.resources.get(res, 0),
                m.bounds.resources.get(res), step.get("resources"), clips,
            )
            for res in sorted(set(want.resources) | set(have.resources))
        }  # fmt: skip
        preferred = want.preferred_batch_sizes
        cap = values["max_batch_size"]
        if cap and any(b > cap for b in preferred):
            kept = tuple(b for b in preferred if b <= cap)
            clips.append(Clip(name, "preferred_batch_sizes", preferred, kept, "max_batch_size"))
            preferred = kept
        out[name] = have.with_values({**values, "resources": resources, "preferred_batch_sizes": preferred})
    memory = _memory(spec, out)
    over = memory_problems(spec, out)
    if over:
        return Proposal(
            actor,
            dict(current),
            {},
            tuple(clips),
            memory,
            refused="; ".join(over),
            refused_field="knobs.instances",
        )
    # A model changes when its guarded knobs differ from what it will run: its pending version if
    # it has one (a newer proposal overtakes it, even back to what runs), else what runs now.
    changes = {
        name: out[name]
        for name in target
        if out[name] != pending.get(name, current[name]).resolved(current[name])
    }
    return Proposal(actor, out, changes, tuple(clips), memory)
