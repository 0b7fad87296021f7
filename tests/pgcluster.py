"""A PostgreSQL cluster of the fault tests' own (`initdb` on a free 127.0.0.1 port), so a test can
restart or stop the production store under a running slatune without touching the machine's
cluster on 5432 that the other tests share.

    with pg_cluster() as pg:
        url = pg.url          # postgresql+psycopg://postgres@127.0.0.1:PORT/slatune
        pg.restart()          # pg_ctl restart -m fast
        pg.stop(); pg.start()

The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the version `make services` runs).
PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.promstack import free_port

LOOPBACK = "127.0.0.1"


def _bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError(
            "no PostgreSQL server binaries under /usr/lib/postgresql (make services installs them)"
        )
    return versions[-1].parent


@dataclass
class PgCluster:
    data: Path
    port: int
    log: Path
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/slatune"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def start(self) -> None:
        self._ctl(
            "-o", f"-p {self.port} -k {self.data} -c listen_addresses={LOOPBACK} -c fsync=off", "start"
        )  # fmt: skip

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._ctl(
            "-m", "fast", "-o", f"-p {self.port} -k {self.data} -c listen_addresses={LOOPBACK} -c fsync=off",
            "restart",
        )  # fmt: skip

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def ready(self) -> bool:
        return self._run("pg_isready", "-h", LOOPBACK, "-p", str(self.port), check=False).returncode == 0


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A fresh cluster with an empty database `slatune`, trusted on loopback; removed afterwards.
    It lives in a folder of its own under the system's temporary directory: pytest's are private
    to root, and the server runs as `postgres`."""
    root = Path(tempfile.mkdtemp(prefix="slatune-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PgCluster(data, free_port(), root / "postgres.log", _bindir())
    cluster._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    cluster.start()
    try:
        deadline = time.monotonic() + 30
        while not cluster.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on port {cluster.port} did not start: {cluster.log.read_text()}"
                )
            time.sleep(0.2)
        cluster._run("createdb", "-h", LOOPBACK, "-p", str(cluster.port), "-U", "postgres", "slatune")
        yield cluster
    finally:
        if cluster.running():
            cluster._run("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
