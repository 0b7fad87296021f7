"""A cpu device that is a set of cores is as busy as its cores: /proc/stat's per-core counters,
parsed purely, and a collector whose pinned servers' device windows take their own cores' figure
(Triton's nv_cpu_utilization is the whole host's), each stored under its server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collectors.collector import Collector, Target
from collectors.cpustat import CoreTimes, core_times, utilization
from store import queries
from store.db import Store
from store.models import DeviceWindowRow

#          user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  300 0 100 900 20 0 0 0 0 0
cpu0 250 0 50 200 0 0 0 0 40 0
cpu1 50 0 50 700 20 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_core_times_count_idle_and_iowait_as_idle_and_leave_guest_out() -> None:
    # cpu0: busy 250 + 50 = 300, total 500 (guest 40 is inside user already)
    # cpu1: busy 50 + 50 = 100, idle 700 + 20, total 820
    assert core_times(STAT) == {0: CoreTimes(300, 500), 1: CoreTimes(100, 820)}


def test_a_kernel_with_fewer_columns_still_reads() -> None:
    assert core_times("cpu3 10 0 10 80\n") == {3: CoreTimes(20, 100)}


@pytest.mark.parametrize(
    ("before", "after", "cores", "expected"),
    [
        # core 0 busy 90 of 100 ticks, core 1 busy 10 of 100: each alone, and the two together
        ({0: CoreTimes(0, 0), 1: CoreTimes(0, 0)}, {0: CoreTimes(90, 100), 1: CoreTimes(10, 100)}, [0], 0.9),
        ({0: CoreTimes(0, 0), 1: CoreTimes(0, 0)}, {0: CoreTimes(90, 100), 1: CoreTimes(10, 100)}, [1], 0.1),
        ({0: CoreTimes(0, 0), 1: CoreTimes(0, 0)}, {0: CoreTimes(90, 100), 1: CoreTimes(10, 100)}, [0, 1], 0.5),
        ({0: CoreTimes(5, 10)}, {0: CoreTimes(5, 10)}, [0], None),  # no time passed
        ({0: CoreTimes(5, 10)}, {0: CoreTimes(9, 20)}, [0, 7], None),  # core 7 is not on this host
    ],
)  # fmt: skip
def test_utilization_is_the_busy_share_of_the_cores_ticks(
    before: dict[int, CoreTimes], after: dict[int, CoreTimes], cores: list[int], expected: float | None
) -> None:
    assert utilization(before, after, cores) == expected


PAGE = """# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="{model}",version="1"}} {n}
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'slatune.db'}")
    s.upgrade()
    with s.session() as session:
        queries.sync_fleet(
            session,
            [queries.ServerInfo(name, "", f"http://{name}/metrics", True) for name in ("s0", "s1", "free")],
            [queries.ModelInfo(m, srv, "bulk", dev) for m, srv, dev in (("a", "s0", "d0"), ("b", "s1", "d1"),
                                                                         ("c", "free", "d2"))],
        )  # fmt: skip
    yield s
    s.dispose()


def test_pinned_servers_device_windows_take_their_own_cores_busy_share(store: Store) -> None:
    passes = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        model = {"s0": "a", "s1": "b", "free": "c"}[request.url.host]
        return httpx.Response(200, text=PAGE.format(model=model, n=passes[0]))

    def ticks() -> dict[int, CoreTimes]:  # core 0 busy 9 ticks in 10 a pass, core 1 1 in 10
        return {0: CoreTimes(9 * passes[0], 10 * passes[0]), 1: CoreTimes(passes[0], 10 * passes[0])}

    targets = [
        Target("s0", "http://s0/metrics", frozenset({"a"}), cores=frozenset({0})),
        Target("s1", "http://s1/metrics", frozenset({"b"}), cores=frozenset({1})),
        Target("free", "http://free/metrics", frozenset({"c"})),  # not pinned: the host's figure
    ]
    c = Collector(
        store, targets, transport=httpx.MockTransport(handler), core_times=ticks, retention_raw_s=None
    )
    try:
        for _ in range(3):
            passes[0] += 1
            result = c.tick()
    finally:
        c.close()
    assert not result.failed
    with store.session() as session:
        names = {i: n for n, i in queries.server_ids(session).items()}
        rows = session.query(DeviceWindowRow).order_by(DeviceWindowRow.id).all()
        by_server = {names[r.server_id]: r.utilization for r in rows if r.server_id is not None}
        assert len(rows) == 6 and all(r.device == "cpu" for r in rows)  # 3 servers x 2 windows
    assert by_server == {"s0": pytest.approx(0.9), "s1": pytest.approx(0.1), "free": 0.5}
