"""Engines, the one transaction scope, and the schema check that guards start-up.

SQLite (WAL) under the data directory is the embedded default; PostgreSQL is the production store.
Repository functions take a session and never commit: `session_scope()` owns the transaction,
commits it or rolls it back, and turns database errors into `StoreError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


class StoreError(RuntimeError):
    """The store failed or refused; the message says what to do."""


class SchemaNotAtHead(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database did not answer (down, restarting, unwritable, locked): the same write may
    succeed later, unlike one the database refused (a constraint, bad data)."""


_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def sqlite_url(data_dir: Path, name: str = "slatune.db") -> str:
    return f"sqlite:///{(Path(data_dir) / name).resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL journaling, a busy timeout and foreign keys."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


class Store:
    """The database behind slatune: an engine, its sessions and its schema state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The one place a transaction is committed or rolled back."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            error = StoreUnavailable if isinstance(exc, _UNAVAILABLE) else StoreError
            raise error(f"store {self.safe_url}: {exc.__class__.__name__}: {_cause(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return str(self.engine.url.render_as_string(hide_password=True))

    def alembic_config(self) -> Config:
        return alembic_config(self.url)

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def require_head(self) -> None:
        """Refuse to run against a schema that is not at the newest migration."""
        try:
            current = self.current_revision()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the store {self.safe_url}: {_cause(exc)}") from None
        head = self.head_revision()
        if current != head:
            raise SchemaNotAtHead(
                f"the store {self.safe_url} is at schema revision {current or '(empty)'}, this slatune needs "
                f"{head}: run `slatune db upgrade` (with the same SLATUNE_DATABASE_URL)"
            )

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    def downgrade(self, revision: str = "base") -> None:
        from alembic import command

        command.downgrade(self.alembic_config(), revision)

    def dispose(self) -> None:
        self.engine.dispose()


def _cause(exc: SQLAlchemyError) -> object:
    """The driver's own message where there is one (shorter than SQLAlchemy's wrapper)."""
    return getattr(exc, "orig", None) or exc


def alembic_config(url: str) -> Config:
    """Alembic's config for `url`, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
