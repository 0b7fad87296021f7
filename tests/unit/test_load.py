"""The load generator: failure reasons, loopback-only targets, what a load may ask, and how its
clients meet an unreachable server. Its statistics are tested in test_stats.py."""

from __future__ import annotations

import pytest

from runtime.load import ModelLoad, demo_trace, failure_reason, require_loopback


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("[503] Request timeout expired", "queue-timeout"),
        ("Exceeds maximum queue size", "queue-full"),
        ("Deadline Exceeded", "client-timeout"),
        ("Request for unknown model: 'x' is not found", "unavailable"),
        ("failed to connect to all addresses", "unavailable"),
        ("MAX_TOKENS must be within 1..64, got 99", "error"),
    ],
)
def test_failure_reason(message: str, reason: str) -> None:
    assert failure_reason(message) == reason


@pytest.mark.parametrize("target", ["127.0.0.1:8001", "localhost:8001", "127.3.2.1:1"])
def test_loopback_accepted(target: str) -> None:
    require_loopback(target)


@pytest.mark.parametrize("target", ["10.0.0.1:8001", "192.168.1.5:8001", "8.8.8.8:53"])
def test_non_loopback_refused(target: str) -> None:
    with pytest.raises(ValueError, match="only sent to loopback"):
        require_loopback(target)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"rate": -1.0}, {"rate": 1.0, "batch": 0}, {"concurrency": 1, "words": (5, 2)}],
)
def test_bad_model_load(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="m:"):
        ModelLoad("m", **kwargs)  # type: ignore[arg-type]


def test_an_unreachable_server_is_a_failure_by_reason_and_bulk_clients_back_off() -> None:
    """Nothing listens on port 1: a streamed chat request fails as `unavailable` (not as an
    unretrieved task exception), and a bulk client waits SHED_BACKOFF_S between tries instead of
    spinning (it once counted 46,131 failures against a restarting server)."""
    from domain.spec import resolve_spec
    from runtime.load import SHED_BACKOFF_S, LoadRun, targets_for

    spec = resolve_spec("default")
    run = LoadRun(
        [ModelLoad("chat-llm", rate=5.0, words=(8, 16), max_tokens=2), ModelLoad("embeddings", concurrency=1)],
        targets_for(spec, lambda s: "127.0.0.1:1"), duration_s=2.0, seed=1,
    ).start()  # fmt: skip
    report = run.join()
    chat, bulk = report.models["chat-llm"], report.models["embeddings"]
    assert chat.sent > 0 and chat.failed == {"unavailable": chat.sent}
    assert bulk.failed == {"unavailable": bulk.sent}
    assert 1 <= bulk.sent <= 2.0 / SHED_BACKOFF_S + 1


def test_the_demo_trace_shifts_chat_then_bulk_never_both_at_once() -> None:
    phases = demo_trace(300.0)
    assert [p.name for p in phases] == ["steady", "chat x2", "bulk x2", "steady again"]
    assert sum(p.duration_s for p in phases) == pytest.approx(300.0)

    def shape(i: int) -> dict[str, tuple[float, int]]:
        return {ld.model: (ld.rate, ld.concurrency) for ld in phases[i].loads}

    steady, chat_x2, bulk_x2, again = (shape(i) for i in range(4))
    assert again == steady
    # each shift doubles one kind of traffic and leaves the rest as it was
    assert {m for m in steady if chat_x2[m] != steady[m]} == {"chat-llm"}
    assert chat_x2["chat-llm"][0] == 2 * steady["chat-llm"][0]
    assert {m for m in steady if bulk_x2[m] != steady[m]} == {"embeddings", "reranker"}
    assert all(bulk_x2[m][1] == 2 * steady[m][1] for m in ("embeddings", "reranker"))
