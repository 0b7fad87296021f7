"""Shared fixtures. Integration fixtures start real servers; each is stopped when its scope ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.fleet import Fleet
from runtime.spec import resolve_spec


@pytest.fixture(scope="session")
def default_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The embedded default fleet on a real tritonserver, shared by the tests that only read it
    or restore what they change."""
    fleet = Fleet(resolve_spec(None), tmp_path_factory.mktemp("default-fleet"))
    timings = fleet.start()
    print(f"\ndefault fleet up and serving in {sum(timings.values()):.1f} s")
    try:
        yield fleet
    finally:
        fleet.stop()


def pids_running(pattern: str) -> list[int]:
    """PIDs of processes whose command line contains `pattern` (to check nothing is orphaned)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if pattern.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                pass
    return out
