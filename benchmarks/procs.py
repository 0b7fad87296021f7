"""CPU seconds from /proc: the whole machine's, one process's, and a process tree's (a benchmark's
own process with the servers it started and their model stubs), so that a run on a shared machine
can say how much of it something else took while it measured."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISY_PERCENT = 10.0
"""CPU of processes outside a benchmark (% of one core) that marks its run as not measured on a quiet machine."""


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (the state first, then the parent, the
    process group, ...), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (its threads included), 0 if it is gone (or pid 0: none)."""
    fields = proc_stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over every core."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is already inside user
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def tree_cpu_s(root: int) -> dict[int, float]:
    """Each living process under `root` (itself included): its CPU seconds with those of the
    children it has reaped (utime + stime + cutime + cstime). Between two readings the tree's time
    is `sum(after) - sum(before)`: a process that ended in between and was reaped inside the tree
    (a model stub replaced by a reload) is in its parent's reaped time by then."""
    rows: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(entry)) is not None:
            cpu = sum(int(v) for v in fields[11:15]) / CLK_TCK
            rows[int(entry)] = (int(fields[1]), cpu)
    return {pid: cpu for pid, (_, cpu) in rows.items() if _under(pid, root, rows)}


def _under(pid: int, root: int, rows: Mapping[int, tuple[int, float]]) -> bool:
    seen = 0
    while pid != root:
        if pid not in rows or seen > len(rows):
            return False
        pid, seen = rows[pid][0], seen + 1
    return True


Reading = tuple[tuple[float, float], dict[int, float]]
"""The machine's (busy, total) CPU seconds and the tree's, at one instant."""


def reading(root: int) -> Reading:
    return machine_cpu_s(), tree_cpu_s(root)


def elsewhere_cpu_s(before: Reading, after: Reading) -> float:
    """CPU seconds the machine was busy outside the tree between two readings (every core)."""
    busy = after[0][0] - before[0][0]
    mine = sum(after[1].values()) - sum(before[1].values())
    return max(busy - mine, 0.0)


def elsewhere_percent(before: Reading, after: Reading, wall_s: float) -> float | None:
    """CPU outside the tree between two readings, in % of one core; None when no time passed."""
    if wall_s <= 0:
        return None
    return 100 * elsewhere_cpu_s(before, after) / wall_s
