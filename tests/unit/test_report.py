"""`slatune report`: the figure's data is the store's. A SQLite store holds windows, applied
versions, controller actions and a tuning run whose trials are in a real Optuna study (SQLite);
`gather` must return exactly the stored values, and `render` writes a PNG of them."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from collectors.parse import ModelSample
from collectors.window import model_window
from controlplane.cli import app
from controlplane.report import Mark, gather, render
from domain.windows import Histogram
from store import control, queries
from store.db import Store
from store.models import TuningRun

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="run-1", storage=optuna_url, direction="maximize")
    for number, (goodput, violation) in enumerate([(50.0, 0.0), (80.0, 0.3), (65.0, 0.0)]):
        score = {"goodput": goodput, "violations": {"guard": violation}, "memory_gb": 1.0}
        study.add_trial(
            optuna.trial.create_trial(value=goodput - 100 * violation, user_attrs={"score": score})
        )
        assert number == study.trials[-1].number
    with s.session() as session:
        ids = queries.sync_fleet(
            session,
            [queries.ServerInfo("s", "", "", True)],
            [
                queries.ModelInfo("guard", "s", "latency-critical", "d", "latency_p99", 20.0),
                queries.ModelInfo("bulk", "s", "bulk", "d"),
            ],
        )
        queries.record_applied(
            session, "guard", {"instances": 1, "max_queue_delay_us": 0}, "spec", "", T0 - 100
        )
        queries.record_applied(
            session, "guard", {"instances": 2, "max_queue_delay_us": 500}, "tuner", "", T0 + 3
        )
        queries.record_applied(
            session, "bulk", {"instances": 1, "max_queue_delay_us": 2000}, "spec", "", T0 + 1
        )
        versions = queries.applied_versions(session)
        windows = []
        for i in range(6):
            fast, slow = 10.0 * (i + 1), float(i)  # each window: its own latencies
            prev = ModelSample(latency={"model": Histogram({10.0: 0, 100.0: 0, float("inf"): 0}, 0, 0)})
            cur = ModelSample(
                success=fast + slow,
                inferences=fast + slow,
                latency={
                    "model": Histogram(
                        {10.0: fast, 100.0: fast + slow, float("inf"): fast + slow}, fast + slow
                    )
                },
            )
            windows.append(model_window("guard", prev, cur, T0 + i, T0 + i + 1))
            bulk = ModelSample(inferences=100.0 * i)
            windows.append(model_window("bulk", ModelSample(), bulk, T0 + i, T0 + i + 1))
        queries.add_windows(session, ids, windows, versions, 1.0)
        control.add_action(
            session,
            at=T0 + 4,
            mode="on",
            kind="protect",
            model="guard",
            reason="queue",
            applied=True,
            changes={},
        )
        session.add(
            TuningRun(study_name="run-1", optuna_storage=optuna_url, status="done", started_at=T0, ended_at=T0 + 6,
                      budget=3, window_s=2.0, models=["guard", "bulk"])
        )  # fmt: skip
    return s


def test_the_figures_data_is_the_stores(store: Store, tmp_path: Path) -> None:
    with store.session() as session:
        data = gather(session, T0, T0 + 10)
        stored = {m: list(queries.windows(session, m)) for m in ("guard", "bulk")}
    assert data.latency["guard"].t == tuple(r.end for r in stored["guard"])
    assert data.latency["guard"].y == tuple(r.p99_ms for r in stored["guard"])
    p99 = data.latency["guard"].y
    assert p99[0] is not None and p99[0] <= 10  # no slow request in the first window
    assert all(y is not None and y > 10 for y in p99[1:])  # one slow one of 20 or more: rank past the fast
    assert data.sla == {"guard": ("latency_p99", 20.0)}
    assert (
        data.goodput["bulk"].y
        == tuple(r.inference_rate for r in stored["bulk"])
        == (0, 100, 200, 300, 400, 500)
    )
    assert set(data.latency) == {"guard"} and set(data.goodput) == {"bulk"}
    # the version in force at the start, then the tuner's
    assert data.knobs["guard"]["instances"].t == (T0, T0 + 3)
    assert data.knobs["guard"]["instances"].y == (1, 2)
    assert data.knobs["guard"]["max_queue_delay_us"].y == (0, 500)
    assert data.knobs["bulk"]["max_queue_delay_us"].y == (2000,)
    assert data.reconfigurations == [Mark(T0 + 1, "bulk", "spec"), Mark(T0 + 3, "guard", "tuner")]
    assert data.actions == [Mark(T0 + 4, "guard", "protect")]
    assert data.run_id == 1 and data.run_span == (T0, T0 + 6)
    assert [(t.number, t.goodput, t.violations) for t in data.trials] == [
        (0, 50, 0),
        (1, 80, 0.3),
        (2, 65, 0),
    ]
    out = render(data, tmp_path / "report.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_a_window_outside_the_span_is_left_out(store: Store) -> None:
    with store.session() as session:
        data = gather(session, T0 + 2.5, T0 + 4.5)
    assert data.latency["guard"].t == (T0 + 3, T0 + 4)
    assert data.reconfigurations == [Mark(T0 + 3, "guard", "tuner")]


def test_slatune_report_writes_the_png(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    result = CliRunner().invoke(app, ["report", str(out), "--database-url", store.url, "--run", "1"])
    assert result.exit_code == 0, result.output
    assert "12 windows, 2 reconfigurations, 1 controller actions, 3 trials" in result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    missing = CliRunner().invoke(app, ["report", str(out), "--database-url", store.url, "--run", "9"])
    assert missing.exit_code == 2 and "no tuning run 9" in missing.output
