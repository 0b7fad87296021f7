"""slatune's settings, from the environment (prefix SLATUNE_), built when asked for, never at import."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.db import sqlite_url


class Settings(BaseSettings):
    # Errors never echo the input: it holds the API token and may hold a database password.
    model_config = SettingsConfigDict(env_prefix="SLATUNE_", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Path(".slatune")
    """Where slatune keeps rendered model repositories, server logs and its state."""
    database_url: str = ""
    """The store: empty means SQLite at <data_dir>/slatune.db; production uses PostgreSQL,
    e.g. postgresql+psycopg://slatune@127.0.0.1:5432/slatune."""
    scrape_interval_s: float = 1.0
    """How often the collectors scrape every server's metrics page."""
    metrics_source: Literal["scrape", "prometheus"] = "scrape"
    """Where the collectors read the servers' counters: their own pages (scrape), or the Prometheus
    at prometheus_url that scrapes them (`collectors.prometheus`)."""
    prometheus_url: str = ""
    """The Prometheus (or Thanos, Mimir: its query API) the collectors read with metrics_source=prometheus."""
    prometheus_lookback_s: float = 60.0
    """A server Prometheus has not scraped for longer than this fails its reading (no_data): two or
    more of Prometheus' scrape intervals."""
    prometheus_server_label: str = "server"
    """The label that names a series' server in Prometheus (`slatune prometheus config` sets it)."""
    retention_raw_s: float = 6 * 3600
    """Raw windows older than this are downsampled to one-minute windows."""
    optuna_url: str = ""
    """Where tuning studies live (Optuna's RDB storage, its own database): empty means SQLite at
    <data_dir>/optuna.db."""
    api_host: str = "127.0.0.1"
    api_port: int = 8780
    api_token: SecretStr | None = None
    """The bearer token every mutating request and the alert webhook must carry. On loopback an
    unset token is generated once and kept in <data_dir>/api-token; any other address needs it set.
    A token that is set must be strong (MIN_TOKEN_CHARS or more, ASCII) wherever the API listens:
    a token is a token, and a weak one set for loopback is one copy away from a public bind."""
    controller_mode: Literal["off", "advisory", "on"] = "advisory"
    """The SLO controller (`domain.control`): off; advisory, recording what it would do without
    doing it (the default: see what it would do before trusting it with a fleet); or on."""
    reconcile_poll_s: float = 2.0
    """How often the reconciler looks for desired configurations when nothing nudges it."""

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = sqlite_url(self.data_dir)
        if not self.optuna_url:
            self.optuna_url = sqlite_url(self.data_dir, "optuna.db")
        if self.metrics_source == "prometheus" and not self.prometheus_url:
            raise ValueError("metrics_source prometheus needs SLATUNE_PROMETHEUS_URL")
        if self.api_token is not None and (why := token_weakness(self.api_token.get_secret_value())):
            raise ValueError(f"SLATUNE_API_TOKEN {why}")
        if not is_loopback(self.api_host) and not (self.api_token and self.api_token.get_secret_value()):
            raise ValueError(
                f"api_host {self.api_host!r} is not a loopback address: set SLATUNE_API_TOKEN "
                "(the API refuses to listen beyond 127.0.0.1 without a bearer token)"
            )
        return self

    def token(self) -> str:
        """The API's bearer token: the configured one, else the one kept under the data directory
        (generated on first use, readable by its owner only)."""
        if self.api_token and self.api_token.get_secret_value():
            return self.api_token.get_secret_value().strip()
        path = self.data_dir / "api-token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return path.read_text().strip()

    @property
    def prometheus_source(self) -> str | None:
        """The Prometheus the collectors read, None when they scrape the servers themselves."""
        return self.prometheus_url if self.metrics_source == "prometheus" else None

    @property
    def fleet_dir(self) -> Path:
        return self.data_dir / "fleet"


MIN_TOKEN_CHARS = 16
"""A bearer token shorter than this (after stripping) is refused: 16 random characters of a
URL-safe alphabet are 96 bits; the generated token has 32."""


def token_weakness(token: str) -> str | None:
    """Why a configured API token cannot be used, or None. An empty one counts as unset (the
    generated token is used on loopback); surrounding whitespace is stripped, as from a file."""
    if token == "":
        return None
    if not token.isascii():
        return "must be ASCII: it travels in an HTTP header"
    if len(token.strip()) < MIN_TOKEN_CHARS:
        return (
            f"is too weak: it needs at least {MIN_TOKEN_CHARS} characters besides surrounding "
            f"whitespace, it has {len(token.strip())} (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')"
        )
    return None


def get_settings() -> Settings:
    return Settings()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
