"""Heartbeats as a table: a loop is ok, failing (with why), stuck (no pass for too long) or not
running, on an injected clock."""

from __future__ import annotations

import pytest

from domain.health import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        ([], "not running"),
        ([("start", 0.0)], "ok"),  # just started: within its 30 s
        ([("start", 0.0), ("wait", 31.0)], "stuck: no pass finished for 31 s (expected within 30 s)"),
        ([("start", 0.0), ("wait", 20.0), ("beat", None), ("wait", 20.0)], "ok"),  # 20 s since the pass
        ([("start", 0.0), ("beat", "StoreError: down")], "failing: StoreError: down"),
        ([("start", 0.0), ("beat", "StoreError: down"), ("beat", None)], "ok"),  # recovered
        # a failing loop that then hangs is stuck: the hang is the news
        ([("start", 0.0), ("beat", "boom"), ("wait", 45.0)], "stuck: no pass finished for 45 s (expected within 30 s)"),
        ([("start", 0.0), ("stop", None)], "not running"),
    ],
)  # fmt: skip
def test_status(steps: list[tuple[str, object]], status: str) -> None:
    clock = Clock()
    hb = Heartbeat("collector", stuck_after_s=30.0, clock=clock)
    for what, arg in steps:
        if what == "wait":
            clock.now += float(arg)  # type: ignore[arg-type]
        elif what == "beat":
            hb.beat(arg)  # type: ignore[arg-type]
        else:
            getattr(hb, what)()
    assert hb.status() == status
