"""The supervisor: restarts a managed tritonserver that died or hung, with backoff.

A server restarts from its on-disk model repository, which every live apply keeps in step, so it
comes back with its last applied configuration on the same ports (clients reconnect). A restart
takes the server's reconfiguration lock, so it never overlaps an apply on that server.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from runtime.server import ServerError

log = logging.getLogger("slatune.runtime")

HANG_S = 30.0
"""A server alive whose liveness endpoint has not answered for this long is hung: it is stopped
and restarted like one that died. A server that aborts can hang in Triton's signal handler, alive
and serving nothing (docs/triton.md, Server); a restart takes about 3 s."""
PROBE_S = 5.0
"""How often the liveness endpoints are asked (each answer is a millisecond; a hung one 2 s)."""


class _Exit(Protocol):
    def poll(self) -> int | None: ...


class Process(Protocol):
    """What the supervisor needs of a managed server (a `runtime.server.TritonProcess`)."""

    @property
    def proc(self) -> _Exit | None:
        """The OS process; None before a start and after a stop."""

    def alive(self) -> bool: ...

    def responsive(self) -> bool:
        """Whether it answers its liveness endpoint."""

    def start(self, timeout: float = ...) -> float:
        """Start and wait until ready; ServerError when it does not come up."""

    def stop(self, timeout: float = ...) -> None: ...


class Supervisor:
    """Watches `processes` every `poll_s` seconds from its own thread (`start()` / `stop()`). A
    server that exited is restarted after a wait of `first_wait_s`, doubled after each failed
    restart up to `max_wait_s` (1, 2, 4 ... 30 s), and back to `first_wait_s` once it is up. So is
    one alive whose liveness endpoint, asked every `probe_s`, has not answered for `hang_s`; it is
    asked only while no reconfiguration or restart holds its lock (one may take it longer).

    `wait(seconds)` sleeps and says whether the supervisor was stopped meanwhile; by default it
    waits on the stop event, tests pass their own so no time passes. `on_restart(server)` is
    called after each restart that came up (the fleet drops its cached channel to that server,
    which may still be waiting out gRPC's reconnect backoff)."""

    def __init__(
        self,
        processes: Mapping[str, Process],
        locks: Mapping[str, threading.Lock],
        *,
        poll_s: float = 0.5,
        first_wait_s: float = 1.0,
        max_wait_s: float = 30.0,
        wait: Callable[[float], bool] | None = None,
        on_restart: Callable[[str], None] | None = None,
        hang_s: float = HANG_S,
        probe_s: float = PROBE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._processes = processes
        self._locks = locks
        self.poll_s = poll_s
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._on_restart = on_restart
        self.hang_s = hang_s
        self.probe_s = probe_s
        self._clock = clock
        self._probed_at = -math.inf
        self._silent_since: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._restarts: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def restarts(self, server: str) -> int:
        """How many times `server` was restarted since the supervisor was made."""
        return self._restarts.get(server, 0)

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="slatune-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching (a wait before a restart ends at once; a restart under way finishes first,
        up to `timeout`)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            if not self.check():
                return

    def check(self) -> bool:
        """One pass: restart every server that exited or hung. False when stopped while waiting to."""
        now = self._clock()
        probe = now - self._probed_at >= self.probe_s
        if probe:
            self._probed_at = now
        for name, proc in self._processes.items():
            if proc.proc is None:  # stopped on purpose
                continue
            wait = self._backoff.get(name, self.first_wait_s)
            if not proc.alive():
                log.warning(
                    "server %s exited (status %s); restarting in %.0f s", name, proc.proc.poll(), wait
                )
            elif probe and self._hung(name, proc, now):
                log.error(
                    "server %s is alive but has not answered its liveness endpoint for %.0f s: hung; "
                    "stopping it and restarting in %.0f s",
                    name, now - self._silent_since[name], wait,
                )  # fmt: skip
            else:
                continue
            self._silent_since.pop(name, None)
            if self._wait(wait):
                return False
            with self._locks[name]:
                proc.stop(timeout=5.0)
                try:
                    proc.start()
                    self._restarts[name] = self.restarts(name) + 1
                    self._backoff.pop(name, None)
                    log.warning("server %s restarted (restart #%d)", name, self._restarts[name])
                    if self._on_restart is not None:
                        self._on_restart(name)
                except ServerError as exc:
                    self._backoff[name] = min(wait * 2, self.max_wait_s)
                    log.error("restart of server %s failed: %s", name, exc)
        return True

    def _hung(self, name: str, proc: Process, now: float) -> bool:
        """Whether `proc` has not answered its liveness endpoint for `hang_s`. Not asked while its
        lock is held: a reconfiguration or restart under way may keep it from answering."""
        lock = self._locks[name]
        if not lock.acquire(blocking=False):
            self._silent_since.pop(name, None)
            return False
        try:
            answered = proc.responsive()
        finally:
            lock.release()
        if answered:
            self._silent_since.pop(name, None)
            return False
        return now - self._silent_since.setdefault(name, now) >= self.hang_s
