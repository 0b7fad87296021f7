"""The SLO controller's decisions: pure functions of what the windows say, the knobs, the state and
the time, in the way of Ray Serve's autoscaling policy. No I/O: `controlplane.controller` reads the
store, calls `decide` once a tick, and records what it returns through the one proposal path.

Two loops share one state:
- **Protect and release (fast).** When a latency-critical model's short-window SLA figure (or its
  pending requests) nears its target (`protect_at` of it), the controller takes the next rung of a
  ladder of protective steps for the bulk models (`ladder`): latency-critical models first at the
  rate limiter, a spare latency-critical instance, bulk compute in the background, bulk instances
  down, and optionally a bulk queue cap (bulk requests shed as back-pressure). A breach of
  `panic_at` times the target jumps to the top at once, as Knative's panic window does; a regime
  with nothing known safe for it yet starts at the top too, and releases find out what its traffic
  allows. Once every latency-critical model has
  stayed under `release_below` of its target for `release_after_s`, one rung is released, the
  costliest first; a rung that costs no bulk work is never released (it would give nothing back):
  what runs then becomes the incumbent. A release is on probation for `floor_watch_s`: its SLA
  figure nearing the target (`protect_at`, the fast figure's threshold too) means the rung below was
  the floor for this traffic, and the protected configuration becomes the regime's incumbent (no
  flapping between the two).
- **Explore (slow).** Only while every SLA holds with headroom (`explore_below`), with no rung
  applied, the controller tries one neighbour of the incumbent: one knob, one step, towards more bulk
  work, ranked by the trials this regime has seen (`rank_neighbours`). It never tries a random
  configuration. A candidate whose fast or settled figure nears a target (`protect_at`) is abandoned on that tick
  (1 s windows) and the incumbent returns with the cooldown and step rails skipped; one that held
  for `trial_s` and packed `adopt_gain` more bulk work becomes the incumbent.

Traffic regimes (`regime_key`): latency-critical models by arrival rate, bulk models by how many
requests their clients keep in flight (rate times latency, Little's law: a closed-loop backlog is the
same backlog whatever the knobs), both on a log-2 scale. The store keeps the incumbent per regime;
entering a regime seen before applies its incumbent at once, a new regime starts from the most
protective configuration known safe, with every protective step on top.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import optuna
from optuna.distributions import IntDistribution

from domain.diagnosis import GATING_SHARE
from domain.spec import FleetSpec, Knobs, memory_problems

# Ranking neighbours opens an in-memory study each time; Optuna would log each one at INFO.
logging.getLogger("optuna.storages._in_memory").setLevel(logging.WARNING)

Mode = Literal["off", "advisory", "on"]
MODES: tuple[Mode, ...] = ("off", "advisory", "on")
Kind = Literal[
    "hold",
    "protect",
    "panic",
    "release",
    "floor",
    "regime",
    "explore",
    "abandon",
    "adopt",
    "reject",
    "interference",
]


@dataclass(frozen=True)
class ControlConfig:
    tick_s: float = 1.0
    short_s: float = 3.0
    """The window the fast loop judges: the last few 1 s windows."""
    protect_at: float = 0.85
    """A latency-critical SLA figure at this fraction of its target takes the next protective step."""
    panic_at: float = 1.5
    """A breach this many times the target jumps to the top of the ladder at once."""
    pending_at: float = 8.0
    """A latency-critical model with this many requests waiting is protected whatever its latency."""
    step_cooldown_s: float = 5.0
    """After a change is applied, before the next protective step: a reload's CPU settles and the
    step shows in the windows."""
    release_below: float = 0.75
    release_after_s: float = 30.0
    """No reading at risk for this long, and every latency-critical model's SLA figure over it under
    `release_below` of its target, releases a rung (hysteresis: protect at 85% of a 3 s figure,
    release under 75% of a 30 s one)."""
    floor_watch_s: float = 30.0
    """A reading at risk this soon after a release makes the rung below the regime's floor. Through
    this watch, and through a neighbour's trial, the SLA's own figure is at risk from `protect_at` of
    the target, not from the target: in the demo a release that broke the guard's 10 s rows was
    caught only once its p99 passed the target, so each such release cost a row or two."""
    watch_s: float = 10.0
    """Within `floor_watch_s` of a release, and through a neighbour's trial, the SLA's own figure is
    judged over the windows since that change (this long at least), not over `release_after_s`:
    those are mostly from before it, calm (that is why it released or explored), and they hid a
    broken tail. A release broke the chat pipeline's p99 for two 10 s rows of the live table (481
    and 260 ms against 250) while the 3 s p95 stayed low; a neighbour broke the guard's rolling
    p99 for 4 s as its clients saw it and was adopted as having held. The p99 over the last
    `watch_s` counts too, the live table's own figure: in the demo a release's tail broke the
    guard's 10 s rows 14-24 s after it while the p99 since it, its calm first seconds included,
    stayed just under target."""
    explore_below: float = 0.7
    explore_calm_s: float = 30.0
    """No reading at risk this long, this long since any step, and every SLA figure over the release
    window under `explore_below` of its target, before a neighbour is tried."""
    explore_instances_below: float = 0.5
    """A neighbour that starts an instance needs more headroom: the instance's start is a burst of
    CPU before it serves (a Python stub process, its model loaded). In the pipeline demo a second
    indexer instance, tried with every SLA under 70%, broke the chat pipeline's 10 s row (p99 272 ms
    against 250) in the 1.1 s before it was abandoned (2026-12-08)."""
    trial_s: float = 20.0
    warmup_s: float = 4.0
    """The first seconds of a trial are not scored (the reload, the queues adjusting)."""
    adopt_gain: float = 0.05
    """A neighbour must pack this much more bulk work (a fraction) to become the incumbent."""
    tabu_s: float = 300.0
    """A neighbour that failed is not tried again in its regime for this long."""
    shed: bool = False
    """Add the bulk queue cap (`SHED`) as the last rung of the ladder."""
    regime_confirm_s: float = 5.0
    """A new regime key must hold this long before the regime changes (no flapping on one window)."""
    interference_after_s: float = 60.0
    """A latency-critical model whose SLA figure over the release window stays broken this long with
    every protective step in force cannot share its device with the bulk models there: the
    controller says so once a minute at most (an `interference` action), and the store keeps the
    rule for the packing planner."""


@dataclass(frozen=True)
class Reading:
    """One latency-critical model over the fast loop's short window."""

    model: str
    target_ms: float
    value_ms: float | None
    """The fast figure: the SLA metric's (TTFT or latency) p95 over the short window; None without
    traffic. Not its p99: over 3 s, a few dozen requests, a p99 is their slowest one, and one
    slow request is no reason for a protective step; many are."""
    pending: float = 0.0
    failures: float = 0.0
    settled_ms: float | None = None
    """The SLA's own figure (the p99) over the release window (`release_after_s`; since a recent
    release or through a trial, `watch_s` at least, or the last `watch_s` where that is higher): a
    breach of it is at risk too, and releases and exploration wait for it to have headroom. None:
    the fast figure stands for it."""
    settled_s: float = 30.0
    """How many seconds `settled_ms` is over."""

    @property
    def ratio(self) -> float:
        """The SLA figure as a fraction of the target; a failed request counts as a breach."""
        if self.failures > 0:
            return math.inf
        return 0.0 if self.value_ms is None else self.value_ms / self.target_ms

    @property
    def settled_ratio(self) -> float:
        return self.ratio if self.settled_ms is None else self.settled_ms / self.target_ms


@dataclass(frozen=True)
class Known:
    """A configuration measured safe for a regime, with the bulk work it packed (items/s)."""

    knobs: Mapping[str, Knobs]
    goodput: float


@dataclass(frozen=True)
class Trial:
    """A past neighbour of a regime's incumbent: what it was, whether it held, what it packed."""

    knobs: Mapping[str, Knobs]
    safe: bool
    goodput: float
    what: str = ""
    """The move from the incumbent it was (`neighbours`' words: "embeddings instances 1 -> 2")."""


@dataclass(frozen=True)
class Observation:
    readings: Mapping[str, Reading]
    regime: str | None
    """The traffic's regime key now (None: not enough traffic to say)."""
    goodput: float
    """Bulk items per second over the last `trial_s` (a trial is scored after its warm-up)."""
    known: Mapping[str, Known] = field(default_factory=dict)
    """The store's incumbent per regime."""
    history: Sequence[Trial] = ()
    """The neighbours tried in the current regime, oldest first."""
    alert: str | None = None
    """A firing alert about a latency-critical model (from Alertmanager): treated as a breach."""
    applying: bool = False
    """A configuration is recorded and not applied yet: the last step has not even started to show."""
    gating: Mapping[str, str] = field(default_factory=dict)
    """Per latency-critical pipeline, the step whose queue holds it up now (`gating_step`)."""
    elsewhere: Sequence[Trial] = ()
    """The neighbours tried in other regimes: weaker evidence, for a move not tried in this one."""


@dataclass(frozen=True)
class Candidate:
    knobs: Mapping[str, Knobs]
    what: str
    started_at: float
    baseline_goodput: float


@dataclass(frozen=True)
class State:
    incumbent: Mapping[str, Knobs]
    """The configuration held safe for the regime; rungs of the ladder go on top of it."""
    level: int = 0
    regime: str | None = None
    incumbent_goodput: float = 0.0
    last_step_at: float = -math.inf
    released_at: float = -math.inf
    calm_since: float | None = None
    """Since when no latency-critical reading has been at risk."""
    seen_regime: str | None = None
    seen_since: float = 0.0
    candidate: Candidate | None = None
    tabu: Mapping[str, float] = field(default_factory=dict)
    """Neighbour fingerprint -> the time until which it is not tried again."""
    interference_at: float = -math.inf
    """When the controller last said a model cannot share its device."""

    def watching_release(self, now: float, cfg: ControlConfig) -> bool:
        """The last release is still on watch (`floor_watch_s`): a reading at risk makes its rung the floor."""
        return now - self.released_at < cfg.floor_watch_s


@dataclass(frozen=True)
class Decision:
    kind: Kind
    state: State
    target: Mapping[str, Knobs] | None = None
    """The configuration to propose (every model), or None to change nothing."""
    known_safe: bool = False
    """A return to a configuration known safe: the cooldown and step rails are skipped."""
    model: str | None = None
    """The latency-critical model the decision is about, if any."""
    reason: str = ""
    rung: str | None = None
    keep: bool = False
    """The incumbent changed: the store keeps it for the regime."""
    kept: Mapping[str, Knobs] | None = None
    """A configuration that held the regime's SLAs with headroom, for the store to keep when it knows
    none for the regime yet (not the incumbent: what ran before a release)."""
    cannot_share: tuple[str, ...] = ()
    """Bulk models `model` was measured unable to share its device with (an interference decision)."""


# --------------------------------------------------------------------------- the ladder
@dataclass(frozen=True)
class Rung:
    name: str
    apply: Callable[[FleetSpec, Mapping[str, Knobs]], dict[str, Knobs]]
    describe: str
    costs_bulk: bool = True
    """It takes bulk work away (fewer instances, a queue cap, longer delays); the rungs that do not
    are never released (they would give nothing back) and go below those that do."""


def _each(
    spec: FleetSpec, knobs: Mapping[str, Knobs], role: str, change: Callable[..., dict[str, object]]
) -> dict[str, Knobs]:
    out = dict(knobs)
    for m in spec.models:
        if m.role == role and m.name in out:
            update = change(m, out[m.name])
            if update:
                out[m.name] = out[m.name].with_values(update)
    return out


def _critical_first(spec: FleetSpec, k: Mapping[str, Knobs]) -> dict[str, Knobs]:
    def change(m, have: Knobs) -> dict[str, object]:  # type: ignore[no-untyped-def]
        res = {
            r: (m.bounds.resources[r].low if r in m.bounds.resources else n)
            for r, n in have.resources.items()
        }
        update: dict[str, object] = {"resources": {r: n for r, n in res.items() if n > 0}}
        if m.role == "latency-critical" and m.bounds.priority is not None:
            update["priority"] = m.bounds.priority.low
        return update

    return _each(spec, _each(spec, k, "latency-critical", change), "bulk", change)


def _bulk(
    knob: str, towards: Callable[..., int | None]
) -> Callable[[FleetSpec, Mapping[str, Knobs]], dict[str, Knobs]]:
    def run(spec: FleetSpec, k: Mapping[str, Knobs]) -> dict[str, Knobs]:
        def change(m, have: Knobs) -> dict[str, object]:  # type: ignore[no-untyped-def]
            rng = getattr(m.bounds, knob)
            value = None if rng is None else towards(rng, have.value(knob))
            return {} if value is None else {knob: value}

        return _each(spec, k, "bulk", change)

    return run


def _critical_instances(spec: FleetSpec, k: Mapping[str, Knobs]) -> dict[str, Knobs]:
    """A spare instance for each latency-critical model that may have one (at least two): a request
    that finds every instance busy waits for the next arrival or Triton's 500 ms batcher re-check
    (docs/triton.md), so a spare instance cuts the tail more than any bulk step."""

    def change(m, have: Knobs) -> dict[str, object]:  # type: ignore[no-untyped-def]
        rng = m.bounds.instances
        want = have.instances if rng is None else min(rng.high, max(have.instances, 2))
        return {"instances": want} if want != have.instances else {}

    return _each(spec, k, "latency-critical", change)


RUNGS: tuple[Rung, ...] = (
    Rung(
        "critical-first",
        _critical_first,
        "no model waits at the rate limiter (tokens dropped where the bounds allow), latency-critical ones at top priority",
        costs_bulk=False,
    ),
    Rung(
        "critical-instances",
        _critical_instances,
        "a spare instance for latency-critical models",
        costs_bulk=False,
    ),
    Rung(
        "bulk-background",
        _bulk("compute_priority", lambda r, v: max(v, r.high)),
        "bulk compute at the lowest priority its bounds allow (it fills what latency-critical models leave)",
        costs_bulk=False,
    ),
    Rung("bulk-instances", _bulk("instances", lambda r, v: r.low), "bulk models at their fewest instances"),
)
"""The default order: what costs bulk work least first, so that releases (from the top) give back the
costliest rung first. The first rung takes every model off the rate limiter's tokens: Triton's rate
limiter tries only the instance at the head of its queue, so any instance waiting for tokens holds up
latency-critical instances behind it that need none (triton-inference-server/server#8358), and a
reload while instances waited there stalled every latency-critical request for about 40 s, three
times in development runs (docs/triton.md). Giving bulk instances every token (one bulk execution
at a time) was the strongest lever measured (the guard under 20 ms at 57% of the bulk work) and is
therefore not a rung; nor is bulk priority, which orders only instances waiting for tokens.
The second rung gives a latency-critical model a spare instance: in place, under a second, and the
guard's tail is mostly requests waiting for its one busy instance. The third runs bulk compute at
Triton's lowest model priority (`optimization.priority`
PRIORITY_MIN: low-priority CUDA streams on a GPU, nice 19 and SCHED_IDLE on the CPU), which costs bulk work next to
nothing (70.1 against 70.0 items/s at the demo load, docs/triton.md) and halves chat's time to
first token: bulk work still fills whatever the latency-critical models leave.
A longer bulk queue delay is not a rung: the bulk clients here are closed-loop, so a delay only
lowers their rate. On the protective corner at the shift benchmark's loads, no bulk queue delay
packed 7-10% more bulk work than 20 ms with the guard held (docs/triton.md, Scheduling); as a rung
it stayed in force through every regime after the first (a new regime starts over the most
protective configuration known safe, the corner, where there is nothing to release). The slow
optimizer still tries delays, one 5 ms step at a time, where they pack more.
Each rung sets values, not steps, so the top of the ladder is a fixed point: protecting an
incumbent that is already the protective corner changes nothing (and reloads nothing)."""

SHED = Rung(
    "bulk-shed",
    _bulk("max_queue_size", lambda r, v: None if r.high < 1 else max(r.low, 1)),
    "bulk queue capped: bulk requests beyond it are shed",
)
"""Not in the default ladder (`ControlConfig.shed` adds it last): on the default fleet one bulk
execution at a time already leaves the latency-critical models a core, a cap sheds bulk requests
without freeing more, and the shed clients' back-off makes their backlog look like another regime."""


def ladder(effects: Mapping[str, float] | None = None, rungs: Sequence[Rung] = RUNGS) -> list[Rung]:
    """The rungs in the order to take them: those that cost no bulk work first, then those that do;
    within each, by what the store's history shows each did (the mean ratio of the worst
    latency-critical figure after the rung to before it; lower worked better), rungs without enough
    history in their default place after those with."""
    effects = effects or {}

    def ordered(group: list[Rung]) -> list[Rung]:
        measured = sorted((r for r in group if r.name in effects), key=lambda r: effects[r.name])
        return measured + [r for r in group if r.name not in effects]

    # Those that cost no bulk work always below those that do: they are never released
    # (`decide`), so a costly rung may never sit under one.
    return ordered([r for r in rungs if not r.costs_bulk]) + ordered([r for r in rungs if r.costs_bulk])


def levels(
    spec: FleetSpec, incumbent: Mapping[str, Knobs], rungs: Sequence[Rung]
) -> list[tuple[str | None, dict[str, Knobs]]]:
    """Level 0 (the incumbent) and each distinct configuration the rungs reach on top of it, with
    the rung that reached it; a rung that changes nothing, or does not fit the memory budget, adds
    no level."""
    out: list[tuple[str | None, dict[str, Knobs]]] = [(None, dict(incumbent))]
    for rung in rungs:
        nxt = rung.apply(spec, out[-1][1])
        if nxt != out[-1][1] and not memory_problems(spec, nxt):
            out.append((rung.name, nxt))
    return out


# --------------------------------------------------------------------------- regimes
REGIME_STAY = 0.6
"""How far (log 2, on any model) traffic may wander from its regime's centre and stay in it: a
Poisson rate measured over 10 s wanders by a quarter, a backlog's estimate by more."""
REGIME_JOIN = 0.45
"""How near a regime seen before traffic must be to join it; further, it is a new regime. A doubling
(1.0) is always a new one."""


def _traffic(
    spec: FleetSpec, rate: Mapping[str, float], inflight: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """Each latency-critical model's arrival rate and each bulk model's requests in flight, with
    the least of it that counts as traffic."""
    out = {}
    for m in spec.models:
        critical = m.role == "latency-critical"
        out[m.name] = (rate.get(m.name, 0.0), 0.25) if critical else (inflight.get(m.name, 0.0), 0.5)
    return out


def regime_point(
    spec: FleetSpec, rate: Mapping[str, float], inflight: Mapping[str, float]
) -> dict[str, float | None]:
    """Each latency-critical model's arrival rate and each bulk model's requests in flight, log 2;
    None for a model without traffic."""
    return {
        name: math.log2(value) if value >= least else None
        for name, (value, least) in _traffic(spec, rate, inflight).items()
    }


def traffic_moving(
    spec: FleetSpec,
    longer: tuple[Mapping[str, float], Mapping[str, float]],
    latest: tuple[Mapping[str, float], Mapping[str, float]],
) -> bool:
    """Whether the traffic of a recent, shorter window is more than `REGIME_JOIN` (log 2) from the
    same traffic over the longer window that regimes are keyed on, for some model: the longer one
    still holds the traffic before a step. A model's traffic under the least that counts is taken
    as that least, so one that hovers at the edge of idle does not keep the traffic moving."""
    a, b = _traffic(spec, *longer), _traffic(spec, *latest)
    return any(
        abs(math.log2(max(a[name][0], least)) - math.log2(max(b[name][0], least))) > REGIME_JOIN
        for name, (_, least) in a.items()
    )


def _key(spec: FleetSpec, point: Mapping[str, float | None]) -> str:
    parts = []
    for m in spec.models:
        v = point.get(m.name)
        prefix = "r" if m.role == "latency-critical" else "c"
        parts.append(f"{m.name}:idle" if v is None else f"{m.name}:{prefix}{v:.1f}")
    return " ".join(parts)


def parse_regime(key: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for part in key.split():
        name, _, value = part.rpartition(":")
        try:
            out[name] = None if value == "idle" else float(value[1:])
        except ValueError:
            continue
    return out


def regime_distance(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> float:
    """The largest difference over the models (log 2); a model idle in one and busy in the other is
    infinitely far."""
    worst = 0.0
    for name in set(a) | set(b):
        x, y = a.get(name), b.get(name)
        if (x is None) != (y is None):
            return math.inf
        if x is not None and y is not None:
            worst = max(worst, abs(x - y))
    return worst


def regime_key(
    spec: FleetSpec,
    rate: Mapping[str, float],
    inflight: Mapping[str, float],
    previous: str | None = None,
    seen: Sequence[str] = (),
    latest: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> str | None:
    """The traffic's regime, named by its centre ("chat-llm:r1.6" is about 3 requests/s): the
    `previous` regime while the traffic stays within `REGIME_STAY` of its centre, else the nearest
    regime `seen` before within `REGIME_JOIN`, else a new one centred here. Regimes are centres, not
    fixed buckets, so traffic sitting on a bucket's edge does not flip between two. None when no
    model has traffic.

    `latest`: the same traffic (rate, inflight) over a shorter, more recent window. While it is
    `traffic_moving` from this one, the regime stays `previous`: a window that straddles a step
    holds traffic that is neither regime, and keyed it was a regime of its own. The shift
    benchmark's every 60 s phase took two keys so, each starting protection over again (the
    controller's journal, 2026-12-07). A new regime is centred on `latest` (a model busy over the
    longer window stays busy, at the least that counts)."""
    point = regime_point(spec, rate, inflight)
    if all(v is None for v in point.values()):
        return None
    if previous is not None and latest is not None and traffic_moving(spec, (rate, inflight), latest):
        return previous
    if previous is not None and regime_distance(point, parse_regime(previous)) <= REGIME_STAY:
        return previous
    near = [(regime_distance(point, parse_regime(k)), k) for k in seen]
    near = [(d, k) for d, k in near if d <= REGIME_JOIN]
    if near:
        return min(near)[1]
    if latest is not None:
        # Centred on the settled traffic, the latest: the longer window still holds some of what
        # came before. Keyed on that, bulk x2's key sat on chat's rate half-way down from its
        # doubling, and the phase took a second key once the window filled (shift, 2026-12-07).
        settled = _traffic(spec, *latest)
        point = {name: None if v is None else math.log2(max(*settled[name])) for name, v in point.items()}
    return _key(spec, point)


def most_protective(known: Mapping[str, Known]) -> Known | None:
    """Of the configurations known safe in any regime, the one that packed the least bulk work."""
    return min(known.values(), key=lambda k: k.goodput, default=None)


# --------------------------------------------------------------------------- neighbours
def _step(knob: str, value: int, sign: int) -> int:
    """One step of a knob on its integer scale: priority is a weight (2 is scheduled half as often
    as 1) and the batch size a power of two, so those halve and double; the others add."""
    if knob == "priority":
        return max(value // 2, 1) if sign < 0 else value * 2
    if knob == "max_batch_size":
        return value * 2 if sign > 0 else max(value // 2, 1)
    return value + sign * {"max_queue_delay_us": 5_000}.get(knob, 1)


NEIGHBOUR_KNOBS: dict[str, tuple[int, ...]] = {
    "instances": (+1,),
    "priority": (-1,),
    "max_queue_delay_us": (+1, -1),
    "max_batch_size": (+1, -1),
}
"""The knobs a neighbour moves and the directions it tries: towards more bulk work (more
instances, a higher rate-limiter priority), and both ways where the knob trades batch size for time
(the queue delay, the batch size). Not the compute priority: bulk work at the lowest one costs next
to none (the `bulk-background` rung), so raising it could only spend the margin."""


def fingerprint(knobs: Mapping[str, Knobs]) -> str:
    return ";".join(f"{m}={knobs[m].model_dump_json()}" for m in sorted(knobs))


def neighbours(spec: FleetSpec, incumbent: Mapping[str, Knobs]) -> list[tuple[str, dict[str, Knobs]]]:
    """One knob of one bulk model, one step towards more bulk work (and the queue delay and batch
    size both ways, the queue cap off), inside the bounds: (what, knobs)."""
    out = []
    for m in spec.models:
        if m.role != "bulk" or m.name not in incumbent:
            continue
        have = incumbent[m.name]
        moves: list[tuple[str, dict[str, object]]] = []
        for knob, signs in NEIGHBOUR_KNOBS.items():
            rng = getattr(m.bounds, knob)
            if rng is None:
                continue
            for sign in signs:
                now, value = have.value(knob), _step(knob, have.value(knob), sign)
                if value in rng and value != now:
                    changed = have.with_values({knob: value})
                    moves.append(
                        (f"{m.name} {knob} {getattr(have, knob)} -> {getattr(changed, knob)}", {knob: value})
                    )
        for res, rng in m.bounds.resources.items():
            value = have.resources.get(res, 0) - 1
            if res in have.resources and value in rng:
                moves.append(
                    (
                        f"{m.name} tokens {res} {have.resources[res]} -> {value}",
                        {"resources": {**have.resources, res: value}},
                    )
                )
        if have.max_queue_size > 0:
            moves.append((f"{m.name} queue cap {have.max_queue_size} -> off", {"max_queue_size": 0}))
        for what, update in moves:
            out.append((what, {**incumbent, m.name: have.with_values(update)}))
    return out


def _distance(a: Mapping[str, Knobs], b: Mapping[str, Knobs]) -> int:
    return sum(a[m] != b.get(m) for m in a)


MODEL_SAMPLES = 8
MODEL_AFTER = 4
"""Trials a regime needs before a model of them ranks its neighbours (Optuna's TPE, which models
where goodput was high and the SLAs held); with fewer, the nearest-trials rule alone ranks them."""


def _dimensions(spec: FleetSpec) -> dict[str, IntDistribution]:
    """The bulk knobs a neighbour moves, each over its bounds: the space the model is fitted on."""
    out = {}
    for m in spec.models:
        if m.role != "bulk":
            continue
        for knob in NEIGHBOUR_KNOBS:
            rng = getattr(m.bounds, knob)
            if rng is not None and rng.low < rng.high:
                out[f"{m.name}:{knob}"] = IntDistribution(rng.low, rng.high)
    return out


def _point(knobs: Mapping[str, Knobs], dims: Mapping[str, IntDistribution]) -> dict[str, int] | None:
    """A configuration as a point of the space; None when it lies outside it (e.g. a batch size
    left to the model's own config)."""
    out = {}
    for name, dist in dims.items():
        model, knob = name.rsplit(":", 1)
        if model not in knobs:
            return None
        value = knobs[model].value(knob)
        if not dist.low <= value <= dist.high:
            return None
        out[name] = value
    return out


def model_target(
    spec: FleetSpec, incumbent: Mapping[str, Knobs], goodput: float, history: Sequence[Trial], seed: int = 0
) -> dict[str, float] | None:
    """Where the regime's history says to go next: Optuna's TPE sampler, told every trial of the
    regime (and the incumbent) with its bulk goodput as the value and whether it held every SLA as
    a constraint, asked for a few points (their mean). It is a direction, never applied: the neighbour nearest to
    it is tried (`rank_neighbours`), one step from a configuration known safe. None with fewer than
    `MODEL_AFTER` trials."""
    dims = _dimensions(spec)
    if len(history) < MODEL_AFTER or not dims:
        return None
    storage = optuna.storages.InMemoryStorage()  # in memory, quietly: no study is kept or logged
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "neighbours")
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=MODEL_AFTER, constant_liar=False)
    study = optuna.Study("neighbours", storage, sampler=sampler)
    for t in (*history, Trial(incumbent, True, goodput)):
        point = _point(t.knobs, dims)
        if point is not None:
            study.add_trial(
                optuna.trial.create_trial(
                    params=point, distributions=dict(dims), value=t.goodput,
                    constraints={"sla": -1.0 if t.safe else 1.0},
                )
            )  # fmt: skip
    # One sample of where goodput was high and the SLAs held is noisy on a short history: the
    # mean of a few is the direction.
    asked = [study.ask(dict(dims)).params for _ in range(MODEL_SAMPLES)]
    return {n: sum(a[n] for a in asked) / len(asked) for n in dims}


def rank_neighbours(
    spec: FleetSpec,
    incumbent: Mapping[str, Knobs],
    history: Sequence[Trial],
    tabu: Mapping[str, float],
    now: float,
    goodput: float = 0.0,
    elsewhere: Sequence[Trial] = (),
) -> list[tuple[str, dict[str, Knobs]]]:
    """The incumbent's neighbours, best first, by what the regime's trials say. Tabu neighbours
    and those that broke an SLA here before are left out. With `MODEL_AFTER` trials or more, the
    neighbour nearest to the model's target (`model_target`) goes first. Otherwise, and among
    equally near ones: one tried before ranks by its bulk work, an untried one by its nearest
    tried configurations (the share of them that held), then by what the same move did in other
    regimes (`elsewhere`: each time it broke an SLA counts twice, each time it held without
    packing enough to be kept once; an adopted move is kept as the regime's incumbent, not as a
    move), then by its neighbours' bulk work; untried with no history in the order of
    `neighbours`."""
    dims = _dimensions(spec)
    target = model_target(spec, incumbent, goodput, history, seed=len(history))
    tried = {fingerprint(t.knobs): t for t in history}
    failed_elsewhere: dict[str, int] = {}
    for t in elsewhere:
        failed_elsewhere[t.what] = failed_elsewhere.get(t.what, 0) + (1 if t.safe else 2)
    scored = []
    for i, (what, knobs) in enumerate(neighbours(spec, incumbent)):
        fp = fingerprint(knobs)
        if tabu.get(fp, -math.inf) > now:
            continue
        if fp in tried:
            t = tried[fp]
            if not t.safe:
                continue
            scored.append(((1.0, 0, t.goodput, -i), what, knobs))
            continue
        near = [t for t in history if _distance(knobs, t.knobs) <= 1]
        safe_share = sum(t.safe for t in near) / len(near) if near else 0.5
        packed = max((t.goodput for t in near if t.safe), default=0.0)
        scored.append(((safe_share, -failed_elsewhere.get(what, 0), packed, -i), what, knobs))
    scored.sort(key=lambda s: s[0], reverse=True)
    if target is not None:

        def far(knobs: Mapping[str, Knobs]) -> float:
            point = _point(knobs, dims) or {}
            return sum(abs(point.get(n, d.low) - target[n]) / (d.high - d.low) for n, d in dims.items())

        scored.sort(key=lambda s: far(s[2]))  # stable: the rule above breaks ties
    return [(what, knobs) for _, what, knobs in scored]


# --------------------------------------------------------------------------- decide
def decide(
    spec: FleetSpec,
    obs: Observation,
    state: State,
    now: float,
    cfg: ControlConfig,
    rungs: Sequence[Rung] = RUNGS,
) -> Decision:
    """The next action, from the readings, the regime and the state at `now`."""
    state = _regime_seen(state, obs.regime, now)
    if obs.applying:  # the settling time counts from when the last change is in, not from its proposal
        state = replace(state, last_step_at=max(state.last_step_at, now))
    steps = levels(spec, state.incumbent, rungs)
    top = len(steps) - 1
    # A change on probation (a release being watched, a neighbour on trial) is judged stricter: its
    # SLA figure is at risk from `protect_at` of the target, not from the target, so that a change
    # that eats the margin is undone before the live table's row breaks, not after.
    probation = state.candidate is not None or state.watching_release(now, cfg)
    settled_at = cfg.protect_at if probation else 1.0
    risky = [
        r for r in obs.readings.values()
        if r.ratio >= cfg.protect_at or r.settled_ratio >= settled_at or r.pending >= cfg.pending_at
    ]  # fmt: skip
    worst = max(risky or obs.readings.values(), key=lambda r: max(r.ratio, r.settled_ratio), default=None)
    at_risk = bool(risky) or obs.alert is not None
    why = _why(worst, obs.alert)

    # A controller that knows nothing safe yet starts protected, before traffic can find it out:
    # every protective step; releases give back those that cost bulk work as they measure safe.
    if (
        state.regime is None
        and state.level == 0
        and not obs.known
        and top > 0
        and state.last_step_at == -math.inf
    ):
        new = replace(state, level=top, last_step_at=now)
        return Decision(
            "regime", new, steps[top][1], known_safe=True, rung=steps[top][0],
            reason="starting with nothing known safe: every protective step, released one at a time as it measures safe",
        )  # fmt: skip

    # A new regime, held long enough: its incumbent if seen before; a new one starts from the most
    # protective configuration known safe (what runs, with nothing known) with every protective step
    # on top: nothing is known safe for this traffic yet, and releases find out what it allows.
    # A neighbour on trial ends here, unjudged: what its trial measures now is the load step, not
    # the move (in the shift benchmark a trial begun 3 s before bulk doubled ran 21 s into the step,
    # the new regime's protective steps waiting behind it, and the guard's p99 broke).
    if (
        state.seen_regime is not None
        and state.seen_regime != state.regime
        and now - state.seen_since >= cfg.regime_confirm_s
    ):
        regime = state.seen_regime
        if state.regime is None and not obs.known:
            # The first regime, with nothing known: the start protected against this traffic and
            # has been releasing as it measured safe. Starting over from every step undid that:
            # each of the shift benchmark's three keys as its load ramped up put the first minute
            # back at the top (2026-12-07).
            return Decision(
                "regime", replace(state, regime=regime),
                reason=f"regime {regime}: the first, with nothing known safe: the start's protection carries on",
            )  # fmt: skip
        running = steps[state.level][1] if state.candidate is None else dict(state.candidate.knobs)
        ended = "" if state.candidate is None else f" (the trial of {state.candidate.what} ends unjudged)"
        state = replace(state, candidate=None)
        known = obs.known.get(regime)
        if known is not None:
            new = replace(
                state, regime=regime, incumbent=dict(known.knobs), incumbent_goodput=known.goodput,
                level=0, calm_since=None, last_step_at=now,
            )  # fmt: skip
            return Decision(
                "regime", new, dict(known.knobs), known_safe=True,
                reason=f"regime {regime} (seen before: its incumbent){ended}",
            )  # fmt: skip
        base = most_protective(obs.known)
        incumbent = dict(base.knobs) if base is not None else dict(state.incumbent)
        fresh = levels(spec, incumbent, rungs)
        new = replace(
            state, regime=regime, incumbent=incumbent, level=len(fresh) - 1, calm_since=None,
            incumbent_goodput=base.goodput if base is not None else state.incumbent_goodput,
        )  # fmt: skip
        protected = fresh[-1][1]
        start = "the most protective configuration known safe" if base is not None else "what runs"
        reason = f"regime {regime}: new: every protective step over {start}, released one at a time as it measures safe{ended}"
        if protected == running:  # already there: nothing to reload
            return Decision("regime", new, reason=reason)
        new = replace(new, last_step_at=now)
        return Decision("regime", new, protected, known_safe=True, rung=fresh[-1][0], reason=reason)

    if at_risk:
        state = replace(state, calm_since=None)
        if state.candidate is not None:  # abandon within the tick: the incumbent comes back
            c = state.candidate
            tabu = {**state.tabu, fingerprint(c.knobs): now + cfg.tabu_s}
            new = replace(state, candidate=None, tabu=tabu, last_step_at=now)
            return Decision(
                "abandon", new, dict(state.incumbent), known_safe=True, model=_model(worst),
                reason=f"abandoned {c.what}: {why}",
            )  # fmt: skip
        if (
            state.level < top
            and state.watching_release(now, cfg)
            and now - state.last_step_at >= cfg.step_cooldown_s
        ):
            # The release just before broke it: the rung below is the floor for this traffic.
            rung, knobs = steps[state.level + 1]
            new = replace(state, incumbent=knobs, level=0, last_step_at=now, released_at=-math.inf)
            return Decision(
                "floor", new, knobs, known_safe=True, model=_model(worst), rung=rung, keep=True,
                reason=f"{why} within {cfg.floor_watch_s:.0f} s of a release: {rung} stays for this regime",
            )  # fmt: skip
        # Even a panic waits for the last step to settle: a reload costs CPU for a few seconds,
        # and a breach it causes is no reason for another reload.
        cooled = now - state.last_step_at >= cfg.step_cooldown_s
        # A breach only the 30 s figure shows is judged on a 30 s figure all after the last step:
        # one taken since is still working its way into it.
        fast = any(r.ratio >= cfg.protect_at or r.pending >= cfg.pending_at for r in risky) or obs.alert
        if not fast:
            cooled = now - state.last_step_at >= cfg.release_after_s
        gate = obs.gating.get(worst.model) if worst is not None else None
        grown = _one_more_instance(spec, state.incumbent, gate) if gate and cooled else None
        if grown is not None and gate is not None and worst is not None:
            # A pipeline at risk: first the step that holds it up, not the bulk work beside it.
            steps_now = levels(spec, grown, rungs)
            level = min(state.level, len(steps_now) - 1)
            new = replace(state, incumbent=grown, level=level, last_step_at=now)
            n = grown[gate].instances
            return Decision(
                "protect", new, steps_now[level][1], model=worst.model, rung="gating-step", keep=True,
                reason=f"{why}: {gate} gates {worst.model} (the longest queue of its steps): {gate} instances {n - 1} -> {n}",
            )  # fmt: skip
        panic = worst is not None and worst.ratio >= cfg.panic_at
        if panic and state.level < top and cooled:
            rung, knobs = steps[top]
            new = replace(state, level=top, last_step_at=now)
            return Decision(
                "panic", new, knobs, known_safe=True, model=_model(worst), rung=rung,
                reason=f"{why}: every protective step at once",
            )  # fmt: skip
        if state.level < top and cooled:
            rung, knobs = steps[state.level + 1]
            new = replace(state, level=state.level + 1, last_step_at=now)
            desc = next(r.describe for r in rungs if r.name == rung)
            return Decision("protect", new, knobs, model=_model(worst), rung=rung, reason=f"{why}: {desc}")
        if (
            state.level == top
            and worst is not None
            and worst.settled_ratio >= 1.0
            and now - state.last_step_at >= cfg.interference_after_s
            and now - state.interference_at >= cfg.interference_after_s
        ):
            device = spec.model(worst.model).device
            bulk = tuple(m.name for m in spec.models if m.role == "bulk" and m.device == device)
            if bulk:
                return Decision(
                    "interference", replace(state, interference_at=now), model=worst.model,
                    cannot_share=bulk,
                    reason=f"{why} with every protective step in force for {now - state.last_step_at:.0f} s: "
                    f"{worst.model} cannot share {device} with {', '.join(bulk)}",
                )  # fmt: skip
        return Decision(
            "hold", state, model=_model(worst), reason=f"{why}: waiting for the last step to show"
        )

    settled = max((r.settled_ratio for r in obs.readings.values()), default=0.0)
    calm_since = now if state.calm_since is None else state.calm_since
    state = replace(state, calm_since=calm_since)

    if state.candidate is not None:
        c = state.candidate
        if now - c.started_at < cfg.trial_s:
            return Decision("hold", state, reason=f"trying {c.what}")
        fp = fingerprint(c.knobs)
        if obs.goodput >= c.baseline_goodput * (1 + cfg.adopt_gain) and settled < cfg.explore_below:
            new = replace(
                state,
                incumbent=dict(c.knobs),
                incumbent_goodput=obs.goodput,
                candidate=None,
                last_step_at=now,
            )
            return Decision(
                "adopt", new, keep=True,
                reason=f"{c.what}: bulk {obs.goodput:.1f} items/s against {c.baseline_goodput:.1f}, SLAs held",
            )  # fmt: skip
        new = replace(state, candidate=None, tabu={**state.tabu, fp: now + cfg.tabu_s}, last_step_at=now)
        return Decision(
            "reject", new, dict(state.incumbent), known_safe=True,
            reason=f"{c.what}: bulk {obs.goodput:.1f} items/s against {c.baseline_goodput:.1f}: no gain worth keeping",
        )  # fmt: skip

    if (
        state.level > 0
        and now - calm_since >= cfg.release_after_s
        and now - state.last_step_at >= cfg.release_after_s
        and settled < cfg.release_below
    ):
        rung, _ = steps[state.level]
        if not _costs_bulk(rung, rungs):
            # Releasing a rung that costs no bulk work gives nothing back and spends the margin
            # (bulk compute back at full priority took the guard's 10 s p99 from 6-9 ms to 13-27 ms
            # for no more bulk work): what runs becomes the incumbent, and exploring starts there.
            held = [name for name, _ in steps[1 : state.level + 1] if name]
            new = replace(state, incumbent=steps[state.level][1], level=0, last_step_at=now, calm_since=now)
            return Decision(
                "floor", new, known_safe=True, rung=rung, keep=True,
                reason=f"every SLA under {cfg.release_below:.0%} of target over {cfg.release_after_s:.0f} s: "
                f"{', '.join(held)} stay (they cost no bulk work; releasing them gives nothing back)",
            )  # fmt: skip
        _, knobs = steps[state.level - 1]
        new = replace(state, level=state.level - 1, last_step_at=now, released_at=now, calm_since=now)
        # What held this long is known safe for the regime, if nothing was known for it yet.
        kept = steps[state.level][1] if state.regime is not None and state.regime not in obs.known else None
        return Decision(
            "release", new, knobs, known_safe=True, rung=rung, kept=kept,
            reason=f"every SLA under {cfg.release_below:.0%} of target over {cfg.release_after_s:.0f} s, none at risk: {rung} released",
        )  # fmt: skip

    if (
        state.level == 0
        and state.regime is not None
        and now - calm_since >= cfg.explore_calm_s
        and now - state.last_step_at >= cfg.explore_calm_s
        and settled < cfg.explore_below
    ):
        ranked = [
            (what, knobs)
            for what, knobs in rank_neighbours(
                spec, state.incumbent, obs.history, state.tabu, now, obs.goodput, obs.elsewhere
            )
            if settled < cfg.explore_instances_below or not _starts_instances(state.incumbent, knobs)
        ]
        if ranked:
            what, knobs = ranked[0]
            cand = Candidate(knobs, what, now + cfg.warmup_s, obs.goodput)
            new = replace(state, candidate=cand, incumbent_goodput=obs.goodput, last_step_at=now)
            return Decision(
                "explore",
                new,
                knobs,
                reason=f"every SLA under {cfg.explore_below:.0%} of target: trying {what}",
            )
    return Decision("hold", state, reason="every SLA holds")


def gating_step(
    spec: FleetSpec, pipeline: str, queue_ms: Mapping[str, float | None], target_ms: float
) -> str | None:
    """The step of `pipeline` with the longest queue, if that queue is GATING_SHARE of its target or more."""
    ens = spec.model(pipeline).source.ensemble
    if ens is None:
        return None
    waits = [(queue_ms.get(s.model) or 0.0, s.model) for s in ens.steps]
    wait, step = max(waits)
    return step if wait >= GATING_SHARE * target_ms else None


def _one_more_instance(
    spec: FleetSpec, knobs: Mapping[str, Knobs], model: str | None
) -> dict[str, Knobs] | None:
    """`knobs` with one more instance of `model`, if its bounds and its device's memory allow."""
    if model is None:
        return None
    rng = spec.model(model).bounds.instances
    have = knobs[model].instances
    if rng is None or have + 1 > rng.high:
        return None
    out = {**knobs, model: knobs[model].with_values({"instances": have + 1})}
    return None if memory_problems(spec, out) else out


def _starts_instances(incumbent: Mapping[str, Knobs], knobs: Mapping[str, Knobs]) -> bool:
    return any(k.instances > incumbent[m].instances for m, k in knobs.items() if m in incumbent)


def _costs_bulk(rung: str | None, rungs: Sequence[Rung]) -> bool:
    return any(r.costs_bulk for r in rungs if r.name == rung)


def _regime_seen(state: State, regime: str | None, now: float) -> State:
    if regime is None or regime == state.seen_regime:
        return state
    return replace(state, seen_regime=regime, seen_since=now)


def _model(r: Reading | None) -> str | None:
    return None if r is None else r.model


def _why(worst: Reading | None, alert: str | None) -> str:
    if alert is not None:
        return f"alert {alert}"
    if worst is None:
        return "no reading"
    if worst.failures > 0:
        return f"{worst.model}: {worst.failures:g} failed requests"
    value = "-" if worst.value_ms is None else f"{worst.value_ms:.0f} ms"
    settled = (
        "" if worst.settled_ms is None else f", p99 over {worst.settled_s:.0f} s {worst.settled_ms:.0f} ms"
    )
    return (
        f"{worst.model} at {value} (p95, 3 s{settled}) of {worst.target_ms:.0f} ms, {worst.pending:g} pending"
    )
