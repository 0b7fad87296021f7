"""slatune's settings, from the environment (prefix SLATUNE_), built when asked for, never at import."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.db import sqlite_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLATUNE_", extra="ignore")

    data_dir: Path = Path(".slatune")
    """Where slatune keeps rendered model repositories, server logs and its state."""
    database_url: str = ""
    """The store: empty means SQLite at <data_dir>/slatune.db; production uses PostgreSQL,
    e.g. postgresql+psycopg://slatune@127.0.0.1:5432/slatune."""
    scrape_interval_s: float = 1.0
    """How often the collectors scrape every server's metrics page."""
    retention_raw_s: float = 6 * 3600
    """Raw windows older than this are downsampled to one-minute windows."""

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = sqlite_url(self.data_dir)
        return self

    @property
    def fleet_dir(self) -> Path:
        return self.data_dir / "fleet"


def get_settings() -> Settings:
    return Settings()
