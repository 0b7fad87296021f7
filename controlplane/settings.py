"""slatune's settings, from the environment (prefix SLATUNE_), built when asked for, never at import."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLATUNE_", extra="ignore")

    data_dir: Path = Path(".slatune")
    """Where slatune keeps rendered model repositories, server logs and its state."""

    @property
    def fleet_dir(self) -> Path:
        return self.data_dir / "fleet"


def get_settings() -> Settings:
    return Settings()
