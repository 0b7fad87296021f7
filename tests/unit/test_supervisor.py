"""The supervisor's restarts and backoff, on stand-in processes (no tritonserver, no time passes).
A real tritonserver killed, or frozen, and brought back is tests/integration/test_lifecycle.py."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.server import ServerError
from runtime.supervisor import Supervisor


class Exit:
    def __init__(self, status: int | None) -> None:
        self.status = status

    def poll(self) -> int | None:
        return self.status


class FakeProcess:
    """Exited (status -9); each start fails (exiting with status 1 while starting) until
    `failures` starts have failed, then it runs."""

    def __init__(self, failures: int = 0) -> None:
        self.proc: Exit | None = Exit(-9)
        self.failures = failures
        self.starts = 0
        self.answers = True
        self.stops = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def responsive(self) -> bool:
        return self.alive() and self.answers

    def start(self, timeout: float = 120.0) -> float:
        self.starts += 1
        if self.failures:
            self.failures -= 1
            self.proc = Exit(1)
            raise ServerError("exited with status 1 while starting")
        self.proc, self.answers = Exit(None), True
        return 0.0

    def stop(self, timeout: float = 20.0) -> None:
        self.stops += 1
        self.proc = None


def supervised(**procs: FakeProcess) -> tuple[Supervisor, list[float]]:
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False  # not stopped meanwhile

    locks = {name: threading.Lock() for name in procs}
    return Supervisor(procs, locks, wait=wait), waits


@pytest.mark.parametrize(
    ("failures", "waits"),
    [
        (0, [1.0]),  # restarted after the first wait
        (1, [1.0, 2.0]),  # failed once: the wait doubles
        (3, [1.0, 2.0, 4.0, 8.0]),
        # doubling from 1 s: 1, 2, 4, 8, 16, then 32 is capped at 30, and stays there
        (7, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]),
    ],
)
def test_a_failing_restart_backs_off_doubling_up_to_30_s(failures: int, waits: list[float]) -> None:
    proc = FakeProcess(failures)
    sup, waited = supervised(triton0=proc)
    for _ in range(failures + 1):
        assert sup.check()
    assert waited == waits
    assert (proc.starts, proc.alive(), sup.restarts("triton0")) == (failures + 1, True, 1)
    assert sup.check() and len(waited) == len(waits)  # running: nothing more to do


def test_backoff_starts_again_from_1_s_once_a_server_is_back() -> None:
    proc = FakeProcess(failures=2)
    sup, waited = supervised(triton0=proc)
    for _ in range(3):
        sup.check()
    proc.proc = Exit(-9)  # dies again
    sup.check()
    assert waited == [1.0, 2.0, 4.0, 1.0]  # 2 failures, back up, then from 1 s again
    assert sup.restarts("triton0") == 2


def test_servers_back_off_each_on_their_own() -> None:
    failing, healthy = FakeProcess(failures=5), FakeProcess()
    healthy.proc = Exit(None)
    sup, waited = supervised(a=failing, b=healthy)
    sup.check()
    sup.check()
    healthy.proc = Exit(-9)
    sup.check()
    assert waited == [1.0, 2.0, 4.0, 1.0]  # a: 1, 2, 4; b's first restart waits 1 s, not a's 8
    assert (sup.restarts("a"), sup.restarts("b")) == (0, 1)


def test_each_restart_that_came_up_is_reported() -> None:
    """The fleet drops its cached channel then; a restart that failed is not reported."""
    proc = FakeProcess(failures=1)
    restarted: list[str] = []
    sup = Supervisor(
        {"triton0": proc}, {"triton0": threading.Lock()}, wait=lambda s: False, on_restart=restarted.append
    )
    sup.check()
    assert restarted == []  # the first restart failed
    sup.check()
    assert restarted == ["triton0"]


def test_a_server_stopped_on_purpose_is_left_alone() -> None:
    proc = FakeProcess()
    proc.proc = None  # never started, or stopped by the fleet
    sup, waited = supervised(triton0=proc)
    assert sup.check() and waited == [] and proc.starts == 0


def test_stopping_during_the_wait_restarts_nothing() -> None:
    proc = FakeProcess()
    sup = Supervisor({"triton0": proc}, {"triton0": threading.Lock()}, wait=lambda seconds: True)
    assert sup.check() is False
    assert proc.starts == 0 and sup.restarts("triton0") == 0


def test_the_thread_stops_promptly() -> None:
    proc = FakeProcess()
    proc.proc = Exit(None)
    sup = Supervisor({"triton0": proc}, {"triton0": threading.Lock()}, poll_s=0.01)
    sup.start()
    thread = sup._thread  # its own thread: another fleet's supervisor may run in this process
    assert thread is not None and thread.is_alive() and thread.name == "slatune-supervisor"
    began = time.monotonic()
    sup.stop(timeout=5)
    assert not thread.is_alive() and time.monotonic() - began < 5


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hanging(clock: Clock, lock: threading.Lock | None = None) -> tuple[Supervisor, FakeProcess]:
    """A supervisor of one server, alive and not answering, on `clock` (asked every 5 s)."""
    proc = FakeProcess()
    proc.proc, proc.answers = Exit(None), False
    sup = Supervisor(
        {"triton0": proc}, {"triton0": lock or threading.Lock()}, wait=lambda s: False, clock=clock
    )
    return sup, proc


def test_a_server_alive_but_silent_for_30_s_is_stopped_and_restarted() -> None:
    clock = Clock()
    sup, proc = hanging(clock)
    for t in (0.0, 1.0, 5.0, 10.0, 25.0):  # silent since 0; asked at 0, 5, 10, 25 (1 is too soon)
        clock.now = t
        assert sup.check()
    assert (proc.stops, proc.starts) == (0, 0)
    clock.now = 30.0
    assert sup.check()
    assert (proc.stops, proc.starts, sup.restarts("triton0")) == (1, 1, 1)
    assert proc.responsive()  # the restarted server answers (FakeProcess.start)


def test_one_answer_starts_the_silence_over() -> None:
    clock = Clock()
    sup, proc = hanging(clock)
    for t, answers in ((0.0, False), (20.0, True), (25.0, False), (50.0, False)):
        clock.now, proc.answers = t, answers
        sup.check()
    assert proc.starts == 0  # silent 25 s since the answer at 20
    clock.now = 55.0
    sup.check()
    assert proc.starts == 1


def test_a_server_is_not_judged_silent_while_a_reconfiguration_holds_its_lock() -> None:
    """A reload or a move under way may keep a server from answering: not a hang."""
    clock, lock = Clock(), threading.Lock()
    sup, proc = hanging(clock, lock)
    with lock:
        for t in range(0, 65, 5):
            clock.now = float(t)
            sup.check()
    assert proc.starts == 0
    for t in (65.0, 90.0):  # released: silent from 65 s, not from 0
        clock.now = t
        sup.check()
    assert proc.starts == 0
    clock.now = 95.0
    sup.check()
    assert proc.starts == 1
