"""A real Prometheus and Alertmanager for the integration tests (Debian's `prometheus` 2.42 and
`prometheus-alertmanager` 0.25, which `make services` installs).

Each runs as a subprocess in its own process group on a free 127.0.0.1 port, with its config, data and
log under the test's temporary directory; it is stopped (SIGTERM, then SIGKILL) when its context ends,
and is sent SIGTERM should the test process die first, so nothing is orphaned.

    with start_alertmanager(tmp_path, webhook_url, "token") as am, \\
         start_prometheus(tmp_path, ["127.0.0.1:8000"], "/metrics", RULES, am.url) as prom:
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from runtime.server import child_argv

PROMETHEUS_BINARY = "prometheus"  # /usr/bin/prometheus
ALERTMANAGER_BINARY = "prometheus-alertmanager"  # /usr/bin/prometheus-alertmanager (Debian's name)
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it


@dataclass(frozen=True)
class Service:
    """A running Prometheus or Alertmanager."""

    name: str
    url: str  # http://127.0.0.1:PORT, no trailing slash
    config_path: Path
    log_path: Path

    @property
    def address(self) -> str:
        """host:port, as Prometheus's static_configs want it."""
        return urlsplit(self.url).netloc

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: `make services` installs prometheus and prometheus-alertmanager"
        )
    return path


def _ready(url: str) -> bool:
    try:
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            return client.get(f"{url}/-/ready").status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its group
    proc.wait()


@contextlib.contextmanager
def _run(name: str, workdir: Path, config: Mapping[str, Any], command: Sequence[str]) -> Iterator[Service]:
    """Write `config`, then start `command` (`{port}` and `{config}` in its arguments replaced) on a
    free port and wait until it is ready; on a port lost to a race, try another."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    log_path = workdir / f"{name}.log"
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        service = Service(name, f"http://{LOOPBACK}:{port}", config_path, log_path)
        argv = [arg.replace("{port}", str(port)).replace("{config}", str(config_path)) for arg in command]
        with open(log_path, "ab") as log:
            log.write(f"\n==== promstack: starting {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                child_argv(argv),  # dies with the test process
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while proc.poll() is None and not _ready(service.url):
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} was not ready within {READY_TIMEOUT_S:.0f} s:\n{service.log_tail()}")
                time.sleep(0.1)
            if proc.returncode is not None:
                if "address already in use" in service.log_tail() and attempt < _PORT_ATTEMPTS:
                    continue
                pytest.fail(
                    f"{name} exited with status {proc.returncode} while starting:\n{service.log_tail()}"
                )
            yield service
            return
        finally:
            _stop(proc)


def start_alertmanager(
    tmp: Path,
    webhook_url: str,
    bearer_token: str | None,
    *,
    group_by: Sequence[str] = ("alertname",),
) -> contextlib.AbstractContextManager[Service]:
    """An Alertmanager routing every alert to one webhook receiver at `webhook_url` (resolved alerts
    too), with `Authorization: Bearer TOKEN` when a token is given. Groups wait 1 s and are re-sent
    after 1 s when they change, after 1 h when not. Clustering (gossip on :9094) is off."""
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
    if bearer_token is not None:
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": bearer_token}}
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": list(group_by),
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "webhook", "webhook_configs": [webhook]}],
    }
    workdir = tmp / "alertmanager"
    command = [
        _binary(ALERTMANAGER_BINARY),
        "--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{{port}}",
        f"--web.external-url=http://{LOOPBACK}:{{port}}",
        "--cluster.listen-address=",
        "--log.level=debug",
    ]
    return _run("alertmanager", workdir, config, command)


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def start_prometheus(
    tmp: Path,
    scrape_targets: list[str],
    metrics_path: str,
    rules_yaml: str,
    alertmanager_url: str | None,
    scrape_interval_s: float = 1.0,
    evaluation_interval_s: float = 1.0,
    *,
    job_name: str = "slatune",
) -> contextlib.AbstractContextManager[Service]:
    """A Prometheus scraping `scrape_targets` (host:port) at `metrics_path`, evaluating the rule file
    `rules_yaml` (a whole file: `groups: [...]`) and sending its alerts to `alertmanager_url`."""
    workdir = tmp / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    rules_path = workdir / "rules.yml"
    rules_path.write_text(rules_yaml)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": _duration(scrape_interval_s),
            "scrape_timeout": _duration(scrape_interval_s),
            "evaluation_interval": _duration(evaluation_interval_s),
        },
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {
                "job_name": job_name,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": scrape_targets}],
            }
        ],
    }
    if alertmanager_url is not None:
        am = urlsplit(alertmanager_url)
        config["alerting"] = {
            "alertmanagers": [
                {
                    "scheme": am.scheme or "http",
                    "path_prefix": am.path or "/",
                    "timeout": "5s",
                    "static_configs": [{"targets": [am.netloc]}],
                }
            ]
        }
    command = [
        _binary(PROMETHEUS_BINARY),
        "--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{{port}}",
        f"--web.external-url=http://{LOOPBACK}:{{port}}",
        "--log.level=debug",
    ]
    return _run("prometheus", workdir, config, command)


def run_alertmanager(tmp: Path, config: Mapping[str, Any]) -> contextlib.AbstractContextManager[Service]:
    """An Alertmanager with a whole configuration of the caller's (say, `slatune prometheus config`'s)."""
    workdir = tmp / "alertmanager"
    command = [
        _binary(ALERTMANAGER_BINARY),
        "--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{{port}}",
        f"--web.external-url=http://{LOOPBACK}:{{port}}",
        "--cluster.listen-address=",
    ]
    return _run("alertmanager", workdir, config, command)


def run_prometheus(
    tmp: Path, config: Mapping[str, Any], files: Mapping[str, str] = {}
) -> contextlib.AbstractContextManager[Service]:
    """A Prometheus with a whole configuration of the caller's, `files` (name -> text: the rule files
    it names) written beside it."""
    workdir = tmp / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (workdir / name).write_text(text)
    command = [
        _binary(PROMETHEUS_BINARY),
        "--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{{port}}",
        f"--web.external-url=http://{LOOPBACK}:{{port}}",
    ]
    return _run("prometheus", workdir, config, command)


def post_alert(
    alertmanager_url: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
    *,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> None:
    """Post one alert to Alertmanager's v2 API (firing; resolved when `ends_at` is in the past)."""
    alert: dict[str, Any] = {"labels": dict(labels), "annotations": dict(annotations or {})}
    if starts_at is not None:
        alert["startsAt"] = starts_at.astimezone(UTC).isoformat()
    if ends_at is not None:
        alert["endsAt"] = ends_at.astimezone(UTC).isoformat()
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        client.post(f"{alertmanager_url}/api/v2/alerts", json=[alert]).raise_for_status()


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector of `expr` now, as Prometheus's API gives it (`[{metric, value}, ...]`)."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        resp = client.get(f"{prometheus_url}/api/v1/query", params={"query": expr})
    resp.raise_for_status()
    result: list[dict[str, Any]] = resp.json()["data"]["result"]
    return result
