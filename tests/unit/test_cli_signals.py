"""Ctrl-C stops a long-running command even when its KeyboardInterrupt is lost: Python prints and
swallows one raised inside a finalizer or a callback, and `slatune collect` ran on past Ctrl-C that
way (beside a CPU hog, under load, once in a dozen stops)."""

import subprocess
import sys

SCRIPT = """
import os, signal, time
from controlplane.cli import _pause, _stop_on_signals

_stop_on_signals()

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)  # lands inside the finalizer: its KeyboardInterrupt is swallowed
        time.sleep(0.2)

Finalized()
print("on", flush=True)
try:
    for _ in range(100):  # 10 s of passes: the loop a command runs until Ctrl-C
        _pause(0.1)
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_a_ctrl_c_swallowed_inside_a_finalizer_still_stops_the_loop() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert "Exception ignored in" in done.stderr and "KeyboardInterrupt" in done.stderr, done.stderr
    assert done.stdout.split() == ["on", "stopped"], done.stdout + done.stderr
