"""Heartbeats and backoff. Each loop of the control plane (collector, reconciler, tuner, controller)
says when it last finished a pass and whether that pass failed, so readiness can name the loop that
is stuck or failing instead of answering "ok" while it hangs; and each waits the same capped
backoff before trying a server again. No I/O: a beat is two assignments."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Heartbeat:
    name: str
    stuck_after_s: float
    """A loop that has not finished a pass for this long is stuck (a call that hangs)."""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    started: float | None = None
    last: float | None = None
    error: str | None = None
    """Why the last pass failed; None when it succeeded."""

    def start(self) -> None:
        self.started, self.last, self.error = self.clock(), None, None

    def beat(self, error: str | None = None) -> None:
        """A pass finished: `error` says why it failed, None that it succeeded."""
        self.last, self.error = self.clock(), error

    def stop(self) -> None:
        self.started = None

    def status(self) -> str:
        """ "ok", or what is wrong, for readiness and the live table."""
        if self.started is None:
            return "not running"
        since = self.clock() - (self.last if self.last is not None else self.started)
        if since > self.stuck_after_s:
            return f"stuck: no pass finished for {since:.0f} s (expected within {self.stuck_after_s:g} s)"
        if self.error is not None:
            return f"failing: {self.error}"
        return "ok"


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """1, 2, 4 ... times `base_s` after each failed attempt, at most `max_s`: how long a loop waits
    before it tries a server again. Retries never end, so the exponent is capped too (2.0 ** 1024
    overflows a float)."""
    return float(min(base_s * 2.0 ** min(max(attempts - 1, 0), 62), max_s))
