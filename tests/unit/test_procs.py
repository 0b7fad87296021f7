"""A benchmark's share of the machine: its own process tree's CPU (children reaped inside it
included) against everything else's, read from /proc with real processes burning CPU."""

import os
import subprocess
import sys
import time

from benchmarks.procs import elsewhere_cpu_s, machine_cpu_s, tree_cpu_s

BURN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}: pass"


def test_cpu_inside_the_tree_is_the_benchmarks_and_cpu_outside_it_is_someone_elses() -> None:
    m0, t0 = machine_cpu_s(), tree_cpu_s(os.getpid())
    # Inside: a child, and a grandchild that ends and is reaped inside the tree (a model stub
    # replaced by a reload). Outside: a process its parent left behind (reparented, no longer ours).
    inside = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.5)])
    subprocess.run(["sh", "-c", f'{sys.executable} -c "{BURN.format(s=0.5)}"'], check=True)
    subprocess.run(["sh", "-c", f'{sys.executable} -c "{BURN.format(s=1.5)}" >/dev/null 2>&1 &'], check=True)
    inside.wait()
    time.sleep(1.7)  # the outsider is done
    m1, t1 = machine_cpu_s(), tree_cpu_s(os.getpid())
    mine = sum(t1.values()) - sum(t0.values())
    other = elsewhere_cpu_s(m0, m1, t0, t1)
    # Each burner got a good share of a core for its wall time, even beside other tests and a hog.
    assert mine >= 0.4, mine
    assert other >= 0.3, other
    assert other <= (m1[0] - m0[0]) - mine + 1e-6
    assert os.getpid() in t1 and inside.pid not in t1  # reaped: in this process's children's time
