"""How busy a set of host cores was: the utilization of a cpu device that is a set of cores.

Triton's `nv_cpu_utilization` is the whole host's (it reads the aggregate line of /proc/stat), so
two servers pinned to different cores report the same figure. A pinned server's device window
takes its own cores' figure instead, from the kernel's per-core counters. The servers slatune
starts run on this host, so its /proc/stat is theirs. Parsing is pure (`core_times`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CoreTimes:
    """A core's cumulative time in clock ticks: busy, and in all."""

    busy: int
    total: int


def core_times(text: str) -> dict[int, CoreTimes]:
    """Per core, from /proc/stat's `cpuN user nice system idle iowait irq softirq steal ...` lines
    (guest time is already inside user and nice, so only the first eight count). Idle and iowait
    are the core's idle time; the rest is busy."""
    out: dict[int, CoreTimes] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        fields = [int(v) for v in rest.split()[:8]]
        if len(fields) < 4:
            continue
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields)
        out[int(name[3:])] = CoreTimes(total - idle, total)
    return out


def utilization(
    before: Mapping[int, CoreTimes], after: Mapping[int, CoreTimes], cores: Iterable[int]
) -> float | None:
    """The busy fraction (0..1) of `cores` between two readings; None when no time passed on them
    (or a core is missing from either reading)."""
    busy = total = 0
    for c in cores:
        if c not in before or c not in after:
            return None
        busy += after[c].busy - before[c].busy
        total += after[c].total - before[c].total
    if total <= 0:
        return None
    return min(max(busy / total, 0.0), 1.0)


def read_core_times(path: Path = PROC_STAT) -> dict[int, CoreTimes]:
    """This host's per-core counters now (empty where there is no /proc/stat)."""
    try:
        return core_times(path.read_text())
    except OSError:
        return {}
