"""The command line as an operator uses it: a fleet kept up by `slatune fleet up`, traffic from
`slatune load`, windows from `slatune collect` with its own metrics served on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime.fleet import read_state
from runtime.server import free_ports
from store import queries
from store.db import Store

pytestmark = pytest.mark.integration


def slatune(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


def own_metrics(port: int) -> str:
    """`slatune collect`'s own /metrics page, or "" while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return str(page.read().decode())
    except OSError:
        return ""


def test_fleet_up_load_and_collect(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'slatune.db'}"
    env = {**os.environ, "SLATUNE_DATA_DIR": str(tmp_path), "SLATUNE_DATABASE_URL": db, "COLUMNS": "200"}
    up = slatune("fleet", "up", env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                read_state(tmp_path / "fleet")
                break
            except Exception:
                assert up.poll() is None, up.stdout.read() if up.stdout else ""
                time.sleep(0.5)
        check = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", "db", "current"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 1 and "slatune db upgrade" in check.stdout
        subprocess.run([sys.executable, "-m", "controlplane.cli", "db", "upgrade"], env=env, check=True)
        (port,) = free_ports(1)
        # Ctrl-C stops it, once the load's requests are all in: a fixed duration ran out before the
        # load was done on a busy machine (the load's own start-up takes seconds there).
        collect = slatune("collect", "--interval", "0.5", "--metrics-port", str(port), env=env)
        deadline = time.monotonic() + 60
        while 'slatune_scrapes_total{server="triton0"}' not in own_metrics(port):  # the baseline pass
            assert collect.poll() is None and time.monotonic() < deadline, (
                collect.stdout.read() if collect.stdout else ""
            )
            time.sleep(0.2)
        out = tmp_path / "load.json"
        load = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", "load", "--rate", "safety-guard=20", "--backlog",
             "embeddings=1", "--batch", "embeddings=4", "--duration", "4", "--json", str(out)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert load.returncode == 0, load.stdout + load.stderr
        report = json.loads(out.read_text())
        assert report["failed"] == 0 and report["models"]["safety-guard"]["sent"] > 20
        time.sleep(2)  # four more passes: the last requests' traces are read
        own = own_metrics(port)
        assert 'slatune_scrapes_total{server="triton0"}' in own
        assert "slatune_windows_written_total" in own and "slatune_store_write_seconds_bucket" in own
        collect.send_signal(signal.SIGINT)
        collect.wait(60)
        assert collect.returncode == 0, collect.stdout.read() if collect.stdout else ""
        store = Store(db)
        with store.session() as session:
            rows = queries.windows(session, "safety-guard")
        store.dispose()
        assert sum(r.requests for r in rows) == report["models"]["safety-guard"]["sent"]
        diagnosed = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", "diagnose", "--seconds", "60", "--json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert diagnosed.returncode == 0, diagnosed.stdout + diagnosed.stderr
        findings = json.loads(diagnosed.stdout)
        assert all({"kind", "subject", "summary", "action", "evidence"} <= set(f) for f in findings)
        # dev0 holds 59 of 80 GB at the default fleet's knobs: not a nearly empty device
        assert not any(f["kind"] == "small-device" for f in findings), findings
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
    assert up.returncode == 0
    assert not (tmp_path / "fleet" / "fleet.json").exists()  # stopped cleanly
