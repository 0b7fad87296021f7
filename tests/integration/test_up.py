"""`slatune up` as an operator runs it: a real process serving the API. Killed between journaling an
apply and finishing it, a restart re-converges from the fleet's real state, applying nothing twice;
Ctrl-C stops everything, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from domain.spec import embedded_spec_path, resolve_spec
from runtime.fleet import Fleet
from store import configs
from store.db import Store, sqlite_url
from tests.conftest import pids_running
from tests.promstack import free_port

pytestmark = pytest.mark.integration

TOKEN = "up-test-token-0123456789"
SLATUNE = str(Path(sys.executable).parent / "slatune")


@contextmanager
def slatune_up(data_dir: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`slatune up` on 127.0.0.1:`port`, ready when this yields; killed if still running after."""
    log = (data_dir / f"up-{time.monotonic_ns()}.log").open("wb")
    env = {**os.environ, "SLATUNE_API_TOKEN": TOKEN, "COLUMNS": "160"}
    proc = subprocess.Popen(
        [SLATUNE, "up", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()


def client(port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60, trust_env=False,
    )  # fmt: skip


def attached_spec(fleet: Fleet, tmp_path: Path) -> Path:
    """The default fleet's models on a server this test owns, so it outlives the killed process."""
    data: dict[str, Any] = yaml.safe_load(embedded_spec_path("default").read_text())
    e = fleet.endpoints("triton0")
    data["servers"] = [
        {"name": "triton0", "http_url": f"http://{e.http}", "grpc_url": e.grpc, "metrics_url": e.metrics_url,
         "rate_limit_resources": {"compute": 2}}
    ]  # fmt: skip
    path = tmp_path / "attached.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_crash_mid_apply_re_converges_on_restart_applying_nothing_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "plane"
    data_dir.mkdir()
    port = free_port()
    store = Store(sqlite_url(data_dir))
    with Fleet(resolve_spec(None), tmp_path / "fleet") as fleet:
        spec = attached_spec(fleet, tmp_path)
        with slatune_up(data_dir, port, "-s", str(spec)) as proc, client(port) as api:
            r = api.post(
                "/models/embeddings/config", json={"knobs": {"instances": 3}, "reason": "crash test"}
            )
            assert r.status_code == 202, r.text
            version_id = r.json()["version"]["id"]
            deadline = time.monotonic() + 30
            while True:  # the moment the apply is journaled, the control plane dies
                with store.session() as session:
                    if any(v.id == version_id for _, _, v in configs.open_entries(session)):
                        break
                assert time.monotonic() < deadline, "the apply was never journaled"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with store.session() as session:
            (entry,) = configs.journal(session, version_id)
            assert entry.finished_at is None  # left open by the crash
            assert configs.version(session, "embeddings", version_id).state == "desired"  # type: ignore[union-attr]
        time.sleep(3)  # whatever Triton received finishes loading

        with slatune_up(data_dir, port, "-s", str(spec)), client(port) as api:
            deadline = time.monotonic() + 60
            while api.get(f"/models/embeddings/config/versions/{version_id}").json()["state"] == "desired":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert api.get(f"/models/embeddings/config/versions/{version_id}").json()["state"] == "applied"
            assert api.get("/models/embeddings/config").json()["running"]["instances"] == 3
        assert fleet.observed_knobs("embeddings").instances == 3
        with store.session() as session:
            entries = [(e.outcome, e.error) for e in configs.journal(session, version_id)]
            assert configs.open_entries(session) == []
        # Either Triton had the change (recorded as applied, not applied again) or it never
        # arrived (the entry closed as interrupted, then applied once).
        assert entries in (
            [("applied", "recovered: Triton runs it")],
            [("interrupted", "the control plane stopped mid-apply"), ("applied", None)],
        ), entries
    store.dispose()


def test_up_serves_the_default_fleet_and_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    port = free_port()
    with slatune_up(tmp_path, port) as proc, client(port) as api:
        assert api.get("/fleet").json()["name"] == "default"
        assert pids_running(str(tmp_path / "fleet" / "repositories"))  # its tritonserver
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0  # also when its parent ignores SIGINT, as the whole suite's did
    assert pids_running(str(tmp_path / "fleet" / "repositories")) == []
    log = next(tmp_path.glob("up-*.log")).read_text()
    assert f"API http://127.0.0.1:{port}/api/v1" in log and "slatune stopped" in log
