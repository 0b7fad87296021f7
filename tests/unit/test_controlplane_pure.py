"""The control plane's pure decisions, as tables: the reconciler's plan and backoff, the alert
policy, and the settings' refusal to listen beyond loopback without a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.policy import Alert, KnownGood, on_alert
from controlplane.reconciler import Step, plan
from controlplane.settings import Settings, is_loopback
from domain.health import backoff_s
from domain.spec import Knobs, resolve_spec

SPEC = resolve_spec(None)
START = {m.name: m.knobs for m in SPEC.models}
ONE, TWO = Knobs(instances=1), Knobs(instances=2)


@pytest.mark.parametrize(
    ("desired", "running", "expected"),
    [
        ({}, {"a": ONE}, []),  # nothing asked for: nothing to do
        ({"a": (7, TWO)}, {"a": ONE}, [Step("a", 7, TWO, True)]),  # a difference: apply it
        ({"a": (7, ONE)}, {"a": ONE}, [Step("a", 7, ONE, False)]),  # already runs: only record it
        # several models, in a stable order, each on its own
        (
            {"b": (9, ONE), "a": (8, TWO)},
            {"a": TWO, "b": TWO},
            [Step("a", 8, TWO, False), Step("b", 9, ONE, True)],
        ),
    ],
)
def test_plan(desired: dict[str, tuple[int, Knobs]], running: dict[str, Knobs], expected: list[Step]) -> None:
    assert plan(desired, running) == expected


def test_plan_applies_latency_critical_models_first() -> None:
    desired = {"chat": (1, TWO), "embeddings": (2, TWO), "guard": (3, TWO)}
    running = {"chat": ONE, "embeddings": ONE, "guard": ONE}
    assert [s.model for s in plan(desired, running, first=["guard", "chat"])] == [
        "chat",
        "guard",
        "embeddings",
    ]
    # a max batch size of 0 is the model's own: nothing to apply
    assert plan({"a": (4, ONE)}, {"a": ONE.with_values({"max_batch_size": 8})})[0].needs_apply is False


@pytest.mark.parametrize(
    ("attempts", "expected"),
    # 1 x 2^(n-1), at most 30; retries never end, and 2.0 ** 1024 (attempt 1,025) would overflow
    [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0), (1_025, 30.0), (10**6, 30.0)],
)
def test_backoff(attempts: int, expected: float) -> None:
    assert backoff_s(attempts, 1.0, 30.0) == expected


GOOD = KnownGood(3, {**START, "chat-llm": START["chat-llm"].model_copy(update={"resources": {}})})


@pytest.mark.parametrize(
    ("alert", "known_good", "proposed", "reason"),
    [
        (
            Alert("SlaBroken", "firing", "chat-llm"),
            GOOD,
            {"chat-llm": GOOD.knobs["chat-llm"]},
            "back to tuning run 3",
        ),
        (Alert("SlaBroken", "resolved", "chat-llm"), GOOD, {}, "is resolved"),
        (Alert("SlaBroken", "firing", "embeddings"), GOOD, {}, "a bulk model"),
        (Alert("SlaBroken", "firing", None), GOOD, {}, "names no model"),
        (Alert("SlaBroken", "firing", "ghost"), GOOD, {}, "names no model"),
        (Alert("SlaBroken", "firing", "chat-llm"), None, {}, "no tuning run has proved"),
        (Alert("SlaBroken", "firing", "chat-llm"), KnownGood(4, START), {}, "already running"),
    ],
)
def test_alert_policy(
    alert: Alert, known_good: KnownGood | None, proposed: dict[str, Knobs], reason: str
) -> None:
    decision = on_alert(SPEC, alert, START, known_good)
    assert decision.proposed == proposed
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_api_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLATUNE_API_TOKEN", raising=False)
    with pytest.raises(
        ValueError, match=r"api_host '0\.0\.0\.0' is not a loopback address: set SLATUNE_API_TOKEN"
    ):
        Settings(api_host="0.0.0.0")
    strong = "t0ken-0123456789abcdef"
    assert Settings(api_host="0.0.0.0", api_token=strong).token() == strong  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])  # a token is a token, wherever it listens
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("q7Z", "too weak: it needs at least 16 characters besides surrounding whitespace, it has 3"),
        (" " * 40, "it has 0"),
        ("\t 0123456789abcde \n", "it has 15"),
        ("t0ken-0123456789abcdéf", "must be ASCII"),
    ],
)
def test_a_weak_token_is_refused(host: str, token: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLATUNE_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SLATUNE_API_TOKEN") as err:
        Settings(api_host=host, api_token=token)  # type: ignore[arg-type]
    assert reason in str(err.value)
    assert token not in str(err.value)  # never echoed: a weak token is still a secret


def test_a_token_from_the_environment_is_checked_and_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLATUNE_API_TOKEN", "short")
    with pytest.raises(ValueError, match="SLATUNE_API_TOKEN is too weak"):
        Settings()
    monkeypatch.setenv("SLATUNE_API_TOKEN", " t0ken-0123456789abcdef\n")
    assert Settings(api_host="10.1.2.3").token() == "t0ken-0123456789abcdef"
    monkeypatch.setenv("SLATUNE_API_TOKEN", "")  # empty is unset: on loopback, the generated token
    with pytest.raises(ValueError, match="not a loopback address: set SLATUNE_API_TOKEN"):
        Settings(api_host="10.1.2.3")


def test_a_loopback_api_generates_its_token_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLATUNE_API_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path)  # type: ignore[arg-type]
    token = settings.token()
    assert len(token) >= 24 and Settings(data_dir=tmp_path).token() == token  # type: ignore[arg-type]
    assert oct((settings.data_dir / "api-token").stat().st_mode & 0o777) == "0o600"
