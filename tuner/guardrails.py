"""Guardrails: the one place every proposed configuration passes through before it is applied,
whoever proposed it (Optuna, a policy, an alert, a person).

Pure: current knobs, proposed knobs, the time of each model's last change and the time now in;
what may be applied, what was clipped and why, out. A proposal whose instances cannot fit in a
device's memory budget is refused whole: it is never deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.spec import KNOB_NAMES, FleetSpec, IntRange, Knobs, memory_problems


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
class Guarded:
    knobs: dict[str, Knobs]
    """What may be applied: every model of the fleet, changed or not."""
    clips: tuple[Clip, ...] = ()
    refused: str | None = None
    """Why the whole proposal was refused (then `knobs` is what runs now)."""

    @property
    def changed(self) -> bool:
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


def guard(
    spec: FleetSpec,
    current: Mapping[str, Knobs],
    proposed: Mapping[str, Knobs],
    *,
    rails: Guardrails,
    last_change: Mapping[str, float],
    now: float,
) -> Guarded:
    """Bounds, then the maximum step, then the cooldown, then the memory budget."""
    out: dict[str, Knobs] = dict(current)
    clips: list[Clip] = []
    for name, want in proposed.items():
        m = spec.model(name)
        have = current[name]
        if want == have:
            continue
        if now - last_change.get(name, float("-inf")) < rails.cooldown_s:
            clips.append(Clip(name, "*", want, have, "cooldown"))
            continue
        values = {
            knob: _guard_value(
                name, knob, getattr(want, knob), getattr(have, knob), getattr(m.bounds, knob),
                rails.max_step.get(knob), clips,
            )
            for knob in KNOB_NAMES
        }  # fmt: skip
        resources = {
            res: _guard_value(
                name, f"resources.{res}", want.resources.get(res, 0), have.resources.get(res, 0),
                m.bounds.resources.get(res), rails.max_step.get("resources"), clips,
            )
            for res in sorted(set(want.resources) | set(have.resources))
        }  # fmt: skip
        out[name] = Knobs(**values, resources=resources)
    problems = memory_problems(spec, out)
    if problems:
        return Guarded(dict(current), tuple(clips), refused="; ".join(problems))
    return Guarded(out, tuple(clips))
