"""The shift benchmark's figures from what clients saw: recovery after a load step against the
stretches of broken seconds at any time."""

from benchmarks.shift import Run, episodes, step_recoveries


def run(phase_starts: list[float]) -> Run:
    return Run("controller", [], phase_starts, wall_offset=0.0, end=phase_starts[-1] + 60.0)


def test_recovery_is_counted_after_each_load_step_that_broke_an_sla() -> None:
    # Phases at 0, 60, 120 and 180 s. Broken: 20-22 s (a blip in the first phase, no step), 63-70 s
    # (the step at 60 s, back under at 71 s), 150-155 s (30 s after the step at 120 s: not its doing).
    bad = set(range(20, 23)) | set(range(63, 71)) | set(range(150, 156))
    broken = [(float(t), t in bad) for t in range(1, 240)]
    steps = step_recoveries(run([100.0, 160.0, 220.0, 280.0]), broken)
    assert steps == [{"phase": 1, "step_at": 60.0, "broke_at": 63.0, "recovery_s": 8.0}]
    # Every stretch, step or not, is a violation episode.
    assert episodes(broken) == [3.0, 8.0, 6.0]


def test_a_step_still_broken_at_the_end_of_the_run_recovers_never_before_it() -> None:
    broken = [(float(t), t >= 65) for t in range(1, 100)]
    (step,) = step_recoveries(run([0.0, 60.0]), broken)
    assert step["broke_at"] == 65.0 and step["recovery_s"] == 35.0  # to the run's last second + 1
