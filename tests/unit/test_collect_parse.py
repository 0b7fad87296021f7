"""Parsing Triton's metrics page and turning two scrapes into windows: saved pages from a real
tritonserver 2.51 running the default fleet, and literal exposition text for the edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from collectors.parse import ModelSample, ParseError, _fast, parse, parse_full
from collectors.window import histogram_increase, increase, model_window
from domain.windows import Histogram, histogram_quantile

FIXTURES = Path(__file__).parent.parent / "fixtures"
PAGE = (FIXTURES / "triton-2.51-default-fleet.metrics").read_text()
LATER = (FIXTURES / "triton-2.51-default-fleet-3s-later.metrics").read_text()


def value(page: str, prefix: str) -> float:
    return float(next(line for line in page.splitlines() if line.startswith(prefix)).split()[-1])


def test_saved_page_has_every_model_and_the_host() -> None:
    scrape = parse(PAGE)
    assert set(scrape.models) == {"chat-llm", "embeddings", "reranker", "safety-guard"}
    emb = scrape.models["embeddings"]
    assert emb.success == value(PAGE, 'nv_inference_request_success{model="embeddings"')
    assert emb.inferences == value(PAGE, 'nv_inference_count{model="embeddings"')
    assert emb.queue_us == value(PAGE, 'nv_inference_queue_duration_us{model="embeddings"')
    assert emb.quantiles["request"][0.99] == value(
        PAGE, 'nv_inference_request_summary_us{model="embeddings",version="1",quantile="0.99"}'
    )
    chat = scrape.models["chat-llm"]
    assert set(chat.ttft) == {"client", "model"}
    assert chat.ttft["client"].count == value(PAGE, 'slatune_ttft_ms_count{model="chat-llm",origin="client"}')
    assert chat.ttft["client"].buckets[math.inf] == chat.ttft["client"].count
    cpu = scrape.devices["cpu"]
    assert cpu.kind == "cpu" and cpu.utilization == value(PAGE, "nv_cpu_utilization")
    assert cpu.memory_total_bytes == value(PAGE, "nv_cpu_memory_total_bytes")


def test_window_between_two_saved_pages() -> None:
    a, b = parse(PAGE), parse(LATER)
    w = model_window("embeddings", a.models["embeddings"], b.models["embeddings"], 100.0, 103.0)
    ea, eb = a.models["embeddings"], b.models["embeddings"]
    assert w.success == eb.success - ea.success > 0
    assert w.request_rate == pytest.approx((eb.success - ea.success) / 3.0)
    assert w.inference_rate == pytest.approx((eb.inferences - ea.inferences) / 3.0)
    assert w.avg_batch == pytest.approx((eb.inferences - ea.inferences) / (eb.executions - ea.executions))
    assert w.avg_queue_ms == pytest.approx((eb.queue_us - ea.queue_us) / w.success / 1000)
    assert w.avg_compute_infer_ms is not None and w.avg_compute_infer_ms > 0
    assert not w.reset
    chat = model_window("chat-llm", a.models["chat-llm"], b.models["chat-llm"], 100.0, 103.0)
    if chat.success:
        assert chat.ttft_source == "client" and chat.ttft_p99_ms is not None


# Literal pages for the edge cases.
def page(
    success: float, queue_us: float, quantile: str = "1200", ttft_le50: float = 3, ttft_inf: float = 4
) -> str:
    return f"""# HELP nv_inference_request_success x
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="m",version="1"}} {success}
nv_inference_request_success{{model="m",version="2"}} 1
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{{model="m",reason="REJECTED",version="1"}} 2
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="m",version="1"}} {queue_us}
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{{model="m",version="1"}} 10
nv_inference_request_summary_us_sum{{model="m",version="1"}} 100
nv_inference_request_summary_us{{model="m",version="1",quantile="0.5"}} NaN
nv_inference_request_summary_us{{model="m",version="1",quantile="0.99"}} {quantile}
# TYPE slatune_ttft_ms histogram
slatune_ttft_ms_count{{model="m",origin="client"}} {ttft_inf}
slatune_ttft_ms_sum{{model="m",origin="client"}} 100
slatune_ttft_ms_bucket{{model="m",origin="client",le="50"}} {ttft_le50}
slatune_ttft_ms_bucket{{model="m",origin="client",le="100"}} {ttft_inf}
slatune_ttft_ms_bucket{{model="m",origin="client",le="+Inf"}} {ttft_inf}
"""


def test_versions_are_summed_and_nan_quantiles_left_out() -> None:
    m = parse(page(10, 500)).models["m"]
    assert m.success == 11  # version 1 (10) + version 2 (1)
    assert m.failures == {"REJECTED": 2}
    assert m.quantiles["request"] == {0.99: 1200.0}  # the NaN median is left out


@pytest.mark.parametrize("bad", ["nv_inference_count{model= 3", "this is not { prometheus"])
def test_malformed_page_fails_the_parse(bad: str) -> None:
    with pytest.raises(ParseError):
        parse(bad)


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        (None, 5.0, (0.0, False)),  # first scrape: no window yet
        (5.0, 8.0, (3.0, False)),
        (8.0, 8.0, (0.0, False)),
        (100.0, 7.0, (7.0, True)),  # reset: it restarted from 0 and reached 7
        (100.0, 0.0, (0.0, True)),
    ],
)
def test_counter_increase(prev: float | None, cur: float, expected: tuple[float, bool]) -> None:
    assert increase(prev, cur) == expected


def test_a_reload_is_a_reset_not_a_negative_rate() -> None:
    before = parse(page(success=1000, queue_us=900_000)).models["m"]
    after_reload = parse(page(success=20, queue_us=4_000)).models["m"]
    w = model_window("m", before, after_reload, 0.0, 2.0)
    assert w.reset
    assert w.success == 21  # both versions' counters restarted: 20 + 1
    # The failure counter reads 2 on both pages: a counter that restarted and came back to the same
    # value cannot be told from one that did not move (as in Prometheus), so it adds nothing.
    assert w.failures == {} and w.request_rate == pytest.approx(21 / 2.0)
    assert w.avg_queue_ms == pytest.approx(4_000 / 21 / 1000)
    assert w.request_rate >= 0 and w.inference_rate >= 0


def test_window_percentiles_and_ttft_from_bucket_deltas() -> None:
    a = parse(page(10, 500, ttft_le50=3, ttft_inf=4)).models["m"]
    b = parse(page(20, 1500, ttft_le50=3, ttft_inf=14)).models["m"]
    w = model_window("m", a, b, 0.0, 1.0)
    # 10 new observations, all in (50, 100]: p50 at rank 5 -> 50 + 50 * 5/10 = 75
    assert w.ttft_source == "client"
    assert w.ttft_p50_ms == pytest.approx(75.0)
    assert w.ttft_p99_ms == pytest.approx(99.5)  # rank 9.9 -> 50 + 50 * 9.9/10
    assert w.p99_ms == pytest.approx(1.2) and w.p50_ms is None


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {10.0: 5, 20.0: 10, math.inf: 10}, 10.0),  # rank 5 is the top of the first bucket
        (0.75, {10.0: 5, 20.0: 10, math.inf: 10}, 15.0),  # rank 7.5: halfway through (10, 20]
        (0.99, {10.0: 0, 20.0: 0, math.inf: 4}, 20.0),  # only +Inf: the highest finite bound
        (0.5, {10.0: 0, math.inf: 0}, None),  # no observations
        (0.5, {}, None),
    ],
)
def test_histogram_quantile(q: float, buckets: dict[float, float], expected: float | None) -> None:
    assert histogram_quantile(q, Histogram(buckets, buckets.get(math.inf, 0.0))) == expected


def test_histogram_reset() -> None:
    prev = Histogram({50.0: 90, math.inf: 100}, 100, 5000)
    cur = Histogram({50.0: 1, math.inf: 2}, 2, 80)
    h, reset = histogram_increase(prev, cur)
    assert reset and h.count == 2 and h.buckets == cur.buckets


def test_first_scrape_gives_an_empty_window() -> None:
    w = model_window("m", None, ModelSample(success=50, inferences=50), 0.0, 1.0)
    assert (w.requests, w.request_rate, w.reset) == (0.0, 0.0, False)


def latency_page(fast: float, slow: float) -> str:
    """A model exporting slatune_request_ms (client origin) beside Triton's summary."""
    return f"""# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="g",version="1"}} {fast + slow}
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us{{model="g",version="1",quantile="0.99"}} 900000
# TYPE slatune_request_ms histogram
slatune_request_ms_bucket{{model="g",origin="client",le="10"}} {fast}
slatune_request_ms_bucket{{model="g",origin="client",le="1000"}} {fast + slow}
slatune_request_ms_bucket{{model="g",origin="client",le="+Inf"}} {fast + slow}
slatune_request_ms_count{{model="g",origin="client"}} {fast + slow}
slatune_request_ms_sum{{model="g",origin="client"}} 0
"""


def test_window_latency_comes_from_the_histogram_not_the_remembering_summary() -> None:
    # Before: 100 fast and 10 slow requests. In the window: 200 more, all fast. Triton's summary
    # still says 900 ms at p99 (it remembers about a minute); the histogram's window does not.
    before = parse(latency_page(fast=100, slow=10)).models["g"]
    after = parse(latency_page(fast=300, slow=10)).models["g"]
    w = model_window("g", before, after, 0.0, 1.0)
    assert w.latency_source == "client"
    assert w.p99_ms == pytest.approx(9.9)  # rank 198 of 200, all in (0, 10]: 10 * 198/200
    assert w.p50_ms == pytest.approx(5.0)


def test_window_latency_falls_back_to_the_summary() -> None:
    a, b = parse(page(10, 500)).models["m"], parse(page(20, 900)).models["m"]
    w = model_window("m", a, b, 0.0, 1.0)
    assert w.latency_source == "summary" and w.p99_ms == pytest.approx(1.2)


# The fast path (`collectors.parse._fast`) against prometheus_client's parser (`parse_full`).
def big_page(models: int = 30) -> str:
    lines = PAGE.splitlines()
    head = [ln for ln in lines if 'model="' not in ln]
    body = [ln for ln in lines if 'model="embeddings"' in ln]
    return (
        "\n".join(head + [ln.replace('"embeddings"', f'"m{i}"') for i in range(models) for ln in body]) + "\n"
    )


@pytest.mark.parametrize("text", [PAGE, LATER, big_page(), page(10, 500), latency_page(3, 4)])
def test_the_fast_path_reads_what_the_full_parser_reads(text: str) -> None:
    fast = _fast(text)
    assert fast is not None  # Triton's own pages take the fast path
    assert fast == parse_full(text)


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ('nv_inference_count{model="m5",version="1" 3', "malformed"),  # brace never closed
        ('nv_inference_count{model="m5",version="1"} three', "malformed"),
        ('nv_inference_count{model="m5",version="1"} NaN', "bad_value"),
        ('nv_inference_count{model="m5",version="1"} -1', "bad_value"),
        ('nv_inference_request_summary_us{model="m5",quantile="x"} 3', "bad_quantile"),
        (
            'nv_inference_compute_input_summary_us{model="m5",quantile="0.5" 3',
            "malformed",
        ),  # a family not read
        ("garbage line", "malformed"),
    ],
)
def test_one_broken_line_in_a_large_page_refuses_it_as_before(broken: str, reason: str) -> None:
    lines = big_page().splitlines()
    lines.insert(len(lines) // 2, broken)
    with pytest.raises(ParseError) as err:
        parse("\n".join(lines) + "\n")
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "odd",
    [
        'nv_inference_count{model="m",version="1"} 3 1700000000000\n',  # a timestamp
        'nv_inference_count{model="m",version="1"}\t3\n',  # a tab
        'nv_inference_count{model="a\\"b",version="1"} 3\n',  # an escaped quote
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\nnv_cpu_utilization 0.5\n",
    ],
)
def test_valid_pages_the_fast_path_cannot_vouch_for_go_the_full_way(odd: str) -> None:
    assert _fast(odd) is None
    assert parse(odd) == parse_full(odd)
