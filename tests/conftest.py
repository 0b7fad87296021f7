"""Shared fixtures. Integration fixtures start real servers; each is stopped when its scope ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.procs import proc_stat
from domain.spec import resolve_spec
from runtime.fleet import Fleet
from store.db import Store


@pytest.fixture(scope="session")
def default_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The embedded default fleet on a real tritonserver, shared by the tests that only read it
    or restore what they change."""
    fleet = Fleet(resolve_spec(None), tmp_path_factory.mktemp("default-fleet"))
    timings = fleet.start()
    print(f"\ndefault fleet up and serving in {sum(timings.values()):.1f} s")
    try:
        yield fleet
    finally:
        fleet.stop()


def alive(pid: int) -> bool:
    """Running, or about to: not gone, nor a zombie waiting to be reaped (it has already ended)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def pids_running(pattern: str) -> list[int]:
    """PIDs of processes whose command line contains `pattern` (to check nothing is orphaned)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if pattern.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                pass
    return out


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432), dropped at the end."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"slatune_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed (make test starts it): {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on both backends: the embedded default and production's."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'slatune.db'}"
        return
    from sqlalchemy import create_engine, text

    url = request.getfixturevalue("postgres_url")
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:  # leave the shared test database empty for the next test
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A store migrated to head on each backend (a module may define its own `store`)."""
    s = Store(store_url)
    s.upgrade()
    yield s
    s.dispose()
