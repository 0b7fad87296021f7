"""The production store restarted and stopped under a running `slatune up` with traffic, on a
PostgreSQL cluster of the test's own: inference never stops, no accepted decision is lost or
applied out of order, and the API says the truth meanwhile (the store unreachable, then ready)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.faults import Outcome, pg_restart, pg_stop_20s
from tests.pgcluster import PgCluster, pg_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


def assert_failed_static(o: Outcome) -> None:
    assert o.up_survived, "slatune up stopped"
    assert o.requests_sent > 100 and o.requests_failed == 0, o.failed_by_reason
    assert o.decisions_lost == 0
    assert o.recover_s is not None and o.recover_s < 30, o.recover_s


def test_a_store_restart_under_load_stops_nothing(pg: PgCluster) -> None:
    o = pg_restart(pg)
    assert_failed_static(o)
    assert o.windows_lost_s <= 3, o  # a fast restart: a scrape or two at most


def test_a_20s_store_outage_is_said_and_survived(pg: PgCluster) -> None:
    o = pg_stop_20s(pg)
    assert_failed_static(o)
    assert any(s.startswith("store: unreachable") for s in o.api_said), o.api_said
    # Windows scraped while the store was down are written when it answers again.
    assert o.windows_lost_s <= 5, o
