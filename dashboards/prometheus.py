"""`slatune prometheus config`: what an operator drops into their monitoring stack. A Prometheus
configuration scraping every Triton server of a fleet (job `triton`, each target labelled with its
`server`) and slatune's own /metrics (job `slatune`), with slatune's rules; and an Alertmanager
route to slatune's webhook carrying the API's bearer token (from a file, never inline)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dashboards.rules import rules_yaml
from domain.spec import FleetSpec

RULES_FILE = "slatune-rules.yml"
PROMETHEUS_FILE = "prometheus.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
TOKEN_FILE = "slatune-token"


def metrics_urls(spec: FleetSpec, running: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each server's metrics URL: what the running fleet reported (`running`, by server), else the
    spec's `metrics_url`, else its `metrics_port` on 127.0.0.1. A server slatune starts on a port
    picked at start-up has none until it runs: it is named in the error."""
    out, unknown = {}, []
    for s in spec.servers:
        url = (running or {}).get(s.name) or s.metrics_url
        if url is None and s.metrics_port is not None:
            url = f"http://127.0.0.1:{s.metrics_port}/metrics"
        if url is None:
            unknown.append(s.name)
        else:
            out[s.name] = url
    if unknown:
        raise ValueError(
            f"no metrics URL for server(s) {', '.join(unknown)}: give metrics_port or metrics_url in the "
            "spec, or start the fleet (`slatune up`) and run this without --spec to read where it answers"
        )
    return out


def _target(url: str) -> tuple[str, str, str]:
    """(scheme, host:port, path) of a metrics URL."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.scheme or "http", parts.netloc, parts.path or "/metrics"


def prometheus_config(
    servers: Mapping[str, str],
    slatune_url: str,
    *,
    alertmanager: str | None = None,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: tuple[str, ...] = (RULES_FILE,),
) -> dict[str, Any]:
    """Scrape `servers` (name -> metrics URL) as job `triton` and slatune at `slatune_url` as job
    `slatune`; evaluate `rule_files` (relative to the configuration's directory); send alerts to
    `alertmanager` (host:port) when given."""
    triton = []
    for name, url in sorted(servers.items()):
        scheme, address, path = _target(url)
        labels = {"server": name, "__metrics_path__": path, "__scheme__": scheme}
        triton.append({"targets": [address], "labels": labels})
    scheme, address, _ = _target(slatune_url)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": "triton", "static_configs": triton},
            {
                "job_name": "slatune",
                "scheme": scheme,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address]}],
            },
        ],
    }
    if alertmanager is not None:
        am = urlsplit(alertmanager if "://" in alertmanager else f"http://{alertmanager}")
        config["alerting"] = {
            "alertmanagers": [
                {
                    "scheme": am.scheme,
                    "path_prefix": am.path or "/",
                    "static_configs": [{"targets": [am.netloc]}],
                }
            ]
        }
    return config


def alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """Every alert to slatune's webhook with `Authorization: Bearer <the token in token_file>`,
    resolved ones too (slatune records them), grouped by alert and model."""
    return {
        "route": {
            "receiver": "slatune",
            "group_by": ["alertname", "model"],
            "group_wait": "10s",
            "group_interval": "1m",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "slatune",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }


@dataclass(frozen=True)
class Written:
    prometheus: Path
    rules: Path
    alertmanager: Path
    token_file: Path


def write(
    out: Path,
    servers: Mapping[str, str],
    slatune_url: str,
    *,
    token: str | None,
    token_file: Path | None,
    alertmanager: str | None = None,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
) -> Written:
    """Write prometheus.yml, slatune-rules.yml and alertmanager.yml under `out`. The webhook's token
    is read from `token_file` where one is given (the data directory's), else `token` is written to
    `out/slatune-token`, readable by its owner only."""
    out.mkdir(parents=True, exist_ok=True)
    if token_file is None:
        if not token:
            raise ValueError("no API token to give Alertmanager")
        token_file = out / TOKEN_FILE
        token_file.touch(mode=0o600)
        os.chmod(token_file, 0o600)
        token_file.write_text(token + "\n")
    base = slatune_url.rstrip("/")
    config = prometheus_config(
        servers, base, alertmanager=alertmanager,
        scrape_interval=scrape_interval, evaluation_interval=evaluation_interval,
    )  # fmt: skip
    written = Written(out / PROMETHEUS_FILE, out / RULES_FILE, out / ALERTMANAGER_FILE, token_file.resolve())
    written.prometheus.write_text(_dump(config))
    written.rules.write_text(rules_yaml())
    written.alertmanager.write_text(_dump(alertmanager_config(f"{base}/api/v1/alerts", written.token_file)))
    return written


def _dump(config: Mapping[str, Any]) -> str:
    header = "# Generated by `slatune prometheus config`.\n"
    return header + yaml.safe_dump(dict(config), sort_keys=False, width=10_000)
