"""The Prometheus/Alertmanager harness (tests/promstack.py) against the real servers: an alert posted
to Alertmanager reaches a webhook with its bearer token, and a rule that Prometheus evaluates on a
scraped gauge fires through Alertmanager to the webhook, then resolves. Nothing is left running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.conftest import pids_running
from tests.promstack import post_alert, query, start_alertmanager, start_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOKEN = "s3cret-webhook-token"


class Webhook:
    """A local HTTP receiver recording each POST's JSON body and Authorization header."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        self._changed = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with webhook._changed:
                    webhook.received.append((self.headers.get("Authorization"), json.loads(body)))
                    webhook._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[str | None, dict[str, Any]]:
        """The first (authorization, payload) received whose payload matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for auth, payload in self.received:
                    if match(payload):
                        return auth, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no matching webhook call within {timeout:.0f} s; got {self.received}")
                self._changed.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def firing(alertname: str, status: str = "firing") -> Callable[[dict[str, Any]], bool]:
    def match(payload: dict[str, Any]) -> bool:
        return any(
            a["labels"].get("alertname") == alertname and a["status"] == status
            for a in payload.get("alerts", [])
        )

    return match


def test_posted_alert_reaches_webhook_with_bearer_token(tmp_path: Path, webhook: Webhook) -> None:
    with start_alertmanager(tmp_path, webhook.url, TOKEN) as am:
        post_alert(
            am.url,
            {"alertname": "DemoPosted", "model": "chat-llm"},
            {"summary": "posted straight to Alertmanager"},
            starts_at=datetime.now(UTC),
        )
        auth, payload = webhook.wait_for(firing("DemoPosted"), timeout=15)
        assert auth == f"Bearer {TOKEN}"
        assert payload["version"] == "4"
        assert payload["status"] == "firing"
        assert payload["receiver"] == "webhook"
        assert payload["externalURL"] == am.url
        (alert,) = payload["alerts"]
        assert alert["labels"] == {"alertname": "DemoPosted", "model": "chat-llm"}
        assert alert["annotations"] == {"summary": "posted straight to Alertmanager"}

        # resolved alerts are sent too (send_resolved)
        post_alert(am.url, {"alertname": "DemoPosted", "model": "chat-llm"}, ends_at=datetime.now(UTC))
        webhook.wait_for(firing("DemoPosted", "resolved"), timeout=15)
    assert pids_running(str(tmp_path)) == []


RULES = """
groups:
  - name: demo
    rules:
      - alert: SlaBroken
        expr: demo_sla_violation > 0
        for: 0s
        labels:
          severity: page
          sla_model: "{{ $labels.model }}"
        annotations:
          summary: "{{ $labels.model }} breaks its SLA"
"""


def test_prometheus_rule_fires_through_alertmanager(tmp_path: Path, webhook: Webhook) -> None:
    registry = CollectorRegistry()
    violation = Gauge("demo_sla_violation", "1 while the model breaks its SLA", ["model"], registry=registry)
    violation.labels(model="chat-llm").set(1)
    metrics, metrics_thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = f"127.0.0.1:{metrics.server_port}"
    try:
        with (
            start_alertmanager(tmp_path, webhook.url, TOKEN) as am,
            start_prometheus(tmp_path, [target], "/metrics", RULES, am.url) as prom,
        ):
            began = time.monotonic()
            auth, payload = webhook.wait_for(firing("SlaBroken"), timeout=30)
            fired_s = time.monotonic() - began
            assert auth == f"Bearer {TOKEN}"
            assert payload["version"] == "4"
            (alert,) = payload["alerts"]
            assert alert["labels"]["model"] == "chat-llm"
            assert alert["labels"]["sla_model"] == "chat-llm"
            assert alert["labels"]["severity"] == "page"
            assert alert["labels"]["instance"] == target
            assert alert["annotations"]["summary"] == "chat-llm breaks its SLA"
            assert alert["generatorURL"].startswith(prom.url)
            assert [r["metric"]["model"] for r in query(prom.url, "demo_sla_violation")] == ["chat-llm"]

            violation.labels(model="chat-llm").set(0)
            began = time.monotonic()
            webhook.wait_for(firing("SlaBroken", "resolved"), timeout=30)
            print(f"\nSlaBroken fired in {fired_s:.1f} s, resolved in {time.monotonic() - began:.1f} s")
    finally:
        metrics.shutdown()
        metrics.server_close()
        metrics_thread.join(5)
    assert pids_running(str(tmp_path)) == []
