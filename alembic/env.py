"""Alembic environment: slatune's metadata, the URL from slatune's settings unless given."""

from __future__ import annotations

from alembic import context
from store.db import make_engine
from store.models import Base

config = context.config
target_metadata = Base.metadata


def url() -> str:
    given = config.get_main_option("sqlalchemy.url")
    if given:
        return given
    from controlplane.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
