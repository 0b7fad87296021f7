"""The store on SQLite and on a real PostgreSQL: migrations up and down with `alembic check`
clean, refusal of a schema not at head, windows stored and queried, retention downsampling."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import inspect

from alembic import command
from domain.windows import ModelWindow, aggregate
from store import queries
from store.db import SchemaNotAtHead, Store, StoreError
from store.models import ConfigVersion, Model

pytestmark = pytest.mark.integration


def test_migrations_up_down_and_check(store_url: str) -> None:
    s = Store(store_url)
    with pytest.raises(SchemaNotAtHead, match="run `slatune db upgrade`"):
        s.require_head()
    s.upgrade()
    s.require_head()
    command.check(s.alembic_config())  # the models and the migrations agree: nothing to autogenerate
    assert {"servers", "models", "metric_windows", "device_windows", "config_versions",
            "reconfiguration_journal", "alerts", "tuning_runs"} <= set(inspect(s.engine).get_table_names())  # fmt: skip
    s.downgrade("base")
    assert set(inspect(s.engine).get_table_names()) <= {"alembic_version"}
    with pytest.raises(SchemaNotAtHead, match=r"at schema revision \(empty\)"):
        s.require_head()
    s.upgrade()
    s.require_head()
    s.dispose()


def fleet(store: Store) -> dict[str, int]:
    with store.session() as session:
        return queries.sync_fleet(
            session,
            [queries.ServerInfo("t0", "127.0.0.1:1", "http://127.0.0.1:2/metrics", True)],
            [queries.ModelInfo("chat", "t0", "latency-critical", "dev0", "ttft_p99", 200.0),
             queries.ModelInfo("emb", "t0", "bulk", "dev0", None, None)],
        )  # fmt: skip


def win(
    model: str, start: float, requests: float, p99: float | None = None, reset: bool = False
) -> ModelWindow:
    return ModelWindow(
        model=model, start=start, end=start + 1.0, requests=requests, success=requests,
        request_rate=requests, inference_rate=requests * 4, avg_queue_ms=2.0, p99_ms=p99, reset=reset,
    )  # fmt: skip


def test_windows_are_tagged_with_their_configuration_version(store: Store) -> None:
    ids = fleet(store)
    with store.session() as session:
        v1 = queries.record_applied(session, "emb", {"instances": 1}, "startup", "spec", at=100.0)
    with store.session() as session:
        versions = queries.applied_versions(session)
        queries.add_windows(session, ids, [win("emb", 100.0 + i, 10) for i in range(5)], versions, 1.0)
    with store.session() as session:
        v2 = queries.record_applied(session, "emb", {"instances": 2}, "tuner", "trial 3", at=105.5)
    with store.session() as session:
        versions = queries.applied_versions(session)
        queries.add_windows(session, ids, [win("emb", 105.0 + i, 20) for i in range(5)], versions, 1.0)
    with store.session() as session:
        first = queries.windows(session, "emb", config_version=v1.id)
        second = queries.windows(session, "emb", config_version=v2.id)
        spanning = [w for w in queries.windows(session, "emb") if w.spans_reconfiguration]
        assert [w.start for w in first] == [100.0, 101.0, 102.0, 103.0, 104.0]
        assert [w.start for w in second] == [106.0, 107.0, 108.0, 109.0]
        assert [(w.start, w.config_version_id) for w in spanning] == [(105.0, None)]  # 105.5 fell inside
        agg = aggregate(second)
        assert (agg.windows, agg.seconds, agg.requests) == (4, 4.0, 80)
        assert agg.request_rate == pytest.approx(20.0) and agg.inference_rate == pytest.approx(80.0)
        states = {v.knobs["instances"]: v.state for v in session.query(ConfigVersion)}
        assert states == {1: "superseded", 2: "applied"}


def test_time_range_query_and_aggregate(store: Store) -> None:
    ids = fleet(store)
    with store.session() as session:
        queries.add_windows(
            session, ids, [win("chat", float(t), 3, p99=10.0 + t) for t in range(10)], {}, 1.0
        )
    with store.session() as session:
        rows = queries.windows(session, "chat", start=3.0, end=6.0)  # windows ending in [3, 6]
        assert [r.end for r in rows] == [3.0, 4.0, 5.0, 6.0]
        agg = aggregate(rows)
        assert agg.requests == 12 and agg.p99_ms == 15.0 and agg.avg_queue_ms == 2.0
        assert queries.windows(session, "emb") == []


def test_downsampling_keeps_totals(store: Store) -> None:
    ids = fleet(store)
    with store.session() as session:
        queries.add_windows(
            session, ids, [win("emb", float(t), 5, p99=float(t % 7)) for t in range(120)], {}, 1.0
        )
        queries.add_windows(session, ids, [win("emb", 1000.0, 5)], {}, 1.0)  # recent: kept as is
    with store.session() as session:
        removed = queries.downsample(session, older_than=500.0, bucket_s=60.0)
    assert removed == 120
    with store.session() as session:
        rows = queries.windows(session, "emb")
        # windows end at 1..120: buckets hold those ending at 1..59 (59 x 5), 60..119 (60 x 5), 120 (5)
        assert [(r.resolution_s, r.requests) for r in rows] == [
            (60.0, 295.0),
            (60.0, 300.0),
            (60.0, 5.0),
            (1.0, 5.0),
        ]
        assert sum(r.requests for r in rows) == 121 * 5
        assert rows[0].p99_ms == 6.0


def test_recent_windows_kept_between_reads_load_only_new_ones_and_follow_a_downsampling(store: Store) -> None:
    """The controller's reader of recent windows: each read equals a fresh `recent_windows` (same
    windows, same sums), keeps what it loaded before (the same objects: decoded once), drops what
    aged out, and follows a downsampling that replaced windows it held."""
    ids = fleet(store)
    buckets = {10.0: 1.0, 100.0: 3.0, math.inf: 3.0}

    def add(start: float, n: int, model: str = "chat") -> None:
        windows = [replace(win(model, start + t, 3, p99=50.0), latency_buckets=buckets) for t in range(n)]
        with store.session() as session:
            queries.add_windows(session, ids, windows, {}, 1.0)

    def same(kept: dict[str, list[Any]], fresh: dict[str, list[Any]]) -> None:
        assert {m: [r.end for r in rows] for m, rows in kept.items()} == {
            m: [r.end for r in rows] for m, rows in fresh.items()
        }
        for m in fresh:
            assert aggregate(kept[m]) == aggregate(fresh[m])

    reader = queries.RecentWindows()
    add(0.0, 20)
    add(0.0, 20, "emb")
    with store.session() as session:
        first = reader.read(session, since=5.0)
        same(first, queries.recent_windows(session, 5.0))
    assert [r.end for r in first["chat"]] == [float(t) for t in range(5, 21)]
    assert set(first["chat"][0].latency_buckets) == {10.0, 100.0, math.inf}  # decoded once, to floats
    add(20.0, 5)
    with store.session() as session:
        second = reader.read(session, since=10.0)
        same(second, queries.recent_windows(session, 10.0))
    assert second["chat"][0] is first["chat"][5]  # kept, not loaded again
    assert [r.end for r in second["chat"]][-5:] == [21.0, 22.0, 23.0, 24.0, 25.0]
    with store.session() as session:  # an operator's short retention replaces windows the reader holds
        assert queries.downsample(session, older_than=15.0, bucket_s=60.0) == 14 + 14
    with store.session() as session:
        third = reader.read(session, since=10.0)
        same(third, queries.recent_windows(session, 10.0))
    assert third["chat"][0].requests == 3 * 14  # the minute that replaced windows 1..14, ending at 14
    assert third["chat"][1] is second["chat"][5]  # the window ending at 15, kept


def test_a_database_error_is_a_store_error_and_rolls_back(store: Store) -> None:
    fleet(store)
    with pytest.raises(StoreError, match="IntegrityError"), store.session() as session:
        session.add(Model(name="chat", server_id=1, role="bulk", device="d"))  # duplicate name
    with store.session() as session:
        assert len(queries.model_ids(session)) == 2


def test_quantiles_over_many_windows_are_exact_from_their_buckets(store: Store) -> None:
    """Nine windows of 100 requests under 10 ms and one of 100 requests near 1 s: the p99 over all
    of them is in the slow window's bucket, and the p50 in the fast ones'. Taking the worst
    window's p99 would say about 1 s for the p50 too."""
    ids = fleet(store)
    fast = {10.0: 100.0, 1000.0: 100.0, math.inf: 100.0}
    slow = {10.0: 0.0, 1000.0: 100.0, math.inf: 100.0}
    windows = [
        ModelWindow(model="emb", start=float(t), end=t + 1.0, requests=100, success=100, request_rate=100,
                    inference_rate=100, p50_ms=990.0 if t == 9 else 5.0, p99_ms=999.0 if t == 9 else 9.9,
                    latency_source="client", latency_buckets=slow if t == 9 else fast)
        for t in range(10)
    ]  # fmt: skip
    with store.session() as session:
        queries.add_windows(session, ids, windows, {}, 1.0)
    with store.session() as session:
        agg = aggregate(queries.windows(session, "emb"))
    # 1000 observations: 900 in (0, 10], 100 in (10, 1000]
    assert agg.p50_ms == pytest.approx(10 * 500 / 900)  # rank 500 in the first bucket
    assert agg.p99_ms == pytest.approx(10 + 990 * (990 - 900) / 100)  # rank 990: 90% into the second
    with store.session() as session:
        queries.downsample(session, older_than=100.0, bucket_s=60.0)
    with store.session() as session:
        (row,) = queries.windows(session, "emb")
        assert aggregate([row]).p99_ms == pytest.approx(agg.p99_ms)  # downsampling keeps the buckets


def test_upgrade_keeps_windows_written_by_an_older_schema(store_url: str) -> None:
    """A store at revision 0002 holding windows upgrades to head; the old windows gain empty
    histograms (a NOT NULL column added to a table with rows needs its server default)."""
    from sqlalchemy import text

    s = Store(store_url)
    s.upgrade("0002")
    with s.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO servers (id, name, grpc_url, metrics_url, managed) VALUES (1, 't', 'g', 'm', true)"
            )
        )
        conn.execute(
            text("INSERT INTO models (id, name, server_id, role, device) VALUES (1, 'emb', 1, 'bulk', 'd')")
        )
        conn.execute(text(
            "INSERT INTO metric_windows (model_id, start, \"end\", resolution_s, spans_reconfiguration, reset, requests,"
            " success, failures, request_rate, inference_rate, pending, p99_ms)"
            " VALUES (1, 0, 1, 1, false, false, 10, 10, '{}', 10, 10, 0, 12.5)"
        ))  # fmt: skip
    s.upgrade()
    s.require_head()
    with s.session() as session:
        (row,) = queries.windows(session, "emb")
        assert row.latency_buckets == {} and row.p99_ms == 12.5
        assert aggregate([row]).p99_ms == 12.5  # no buckets: the window's own p99
    s.dispose()


def test_upgrade_to_0006_judges_stored_slas_by_the_defaults(store_url: str) -> None:
    """SLAs stored before revision 0006 get the default window and objective, the spec's SLA as
    last seen too: a spec that did not change then leaves a person's SLA in force."""
    from sqlalchemy import text

    s = Store(store_url)
    s.upgrade("0005")
    with s.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO servers (id, name, grpc_url, metrics_url, managed) VALUES (1, 't0', 'g', 'm', true)"
            )
        )
        conn.execute(text(  # the spec said 200 ms, a person set 150 ms since
            "INSERT INTO models (id, name, server_id, role, device, sla_metric, sla_target_ms, spec_sla_metric,"
            " spec_sla_target_ms) VALUES (1, 'chat', 1, 'latency-critical', 'dev0', 'ttft_p99', 150, 'ttft_p99', 200),"
            " (2, 'emb', 1, 'bulk', 'dev0', NULL, NULL, NULL, NULL)"
        ))  # fmt: skip
    s.upgrade()
    s.require_head()
    fleet(s)  # the same spec, its SLA written without window or objective: the defaults
    with s.session() as session:
        chat, emb = session.get(Model, 1), session.get(Model, 2)
        assert chat is not None and emb is not None
        assert (chat.sla_target_ms, chat.sla_window_s, chat.sla_objective) == (150.0, 60.0, 0.99)
        assert (chat.spec_sla_window_s, chat.spec_sla_objective) == (60.0, 0.99)
        assert (emb.sla_window_s, emb.sla_objective) == (None, None)  # no SLA, nothing to judge by
    s.dispose()
