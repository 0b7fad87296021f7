"""The supervisor: restarts a managed tritonserver that died, with backoff.

A server restarts from its on-disk model repository, which every live apply keeps in step, so it
comes back with its last applied configuration on the same ports (clients reconnect). A restart
takes the server's reconfiguration lock, so it never overlaps an apply on that server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from runtime.server import ServerError

log = logging.getLogger("slatune.runtime")


class _Exit(Protocol):
    def poll(self) -> int | None: ...


class Process(Protocol):
    """What the supervisor needs of a managed server (a `runtime.server.TritonProcess`)."""

    @property
    def proc(self) -> _Exit | None:
        """The OS process; None before a start and after a stop."""

    def alive(self) -> bool: ...

    def start(self, timeout: float = ...) -> float:
        """Start and wait until ready; ServerError when it does not come up."""

    def stop(self, timeout: float = ...) -> None: ...


class Supervisor:
    """Watches `processes` every `poll_s` seconds from its own thread (`start()` / `stop()`). A
    server that exited is restarted after a wait of `first_wait_s`, doubled after each failed
    restart up to `max_wait_s` (1, 2, 4 ... 30 s), and back to `first_wait_s` once it is up.

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
    ) -> None:
        self._processes = processes
        self._locks = locks
        self.poll_s = poll_s
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._on_restart = on_restart
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
        """One pass: restart every server that exited. False when stopped while waiting to."""
        for name, proc in self._processes.items():
            if proc.alive() or proc.proc is None:
                continue
            status = proc.proc.poll()
            wait = self._backoff.get(name, self.first_wait_s)
            log.warning("server %s exited (status %s); restarting in %.0f s", name, status, wait)
            if self._wait(wait):
                return False
            with self._locks[name]:
                proc.stop()
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
