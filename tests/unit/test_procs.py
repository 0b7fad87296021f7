"""A benchmark's share of the machine: its own process tree's CPU (children reaped inside it
included) against everything else's, read from /proc with real processes burning CPU."""

import os
import subprocess
import sys
import time

from benchmarks.procs import elsewhere_cpu_s, reading

BURN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}: pass"


def test_cpu_inside_the_tree_is_the_benchmarks_and_cpu_outside_it_is_someone_elses() -> None:
    before = reading(os.getpid())
    # Inside: a child, and a grandchild that ends and is reaped inside the tree (a model stub
    # replaced by a reload). Outside: a process its parent left behind (reparented, no longer ours).
    inside = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.5)])
    subprocess.run(["sh", "-c", f'{sys.executable} -c "{BURN.format(s=0.5)}"'], check=True)
    subprocess.run(["sh", "-c", f'{sys.executable} -c "{BURN.format(s=1.5)}" >/dev/null 2>&1 &'], check=True)
    inside.wait()
    time.sleep(1.7)  # the outsider is done
    after = reading(os.getpid())
    mine = sum(after[1].values()) - sum(before[1].values())
    other = elsewhere_cpu_s(before, after)
    # Each burner got a good share of a core for its wall time, even beside other tests and a hog.
    assert mine >= 0.4, mine
    assert other >= 0.3, other
    assert other <= (after[0][0] - before[0][0]) - mine + 1e-6
    assert os.getpid() in after[1] and inside.pid not in after[1]  # reaped: in this process's children's time
