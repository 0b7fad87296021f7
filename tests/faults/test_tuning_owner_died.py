"""A tuning run whose process died (SIGKILL while its trial is being deployed): the restarted
`slatune up` marks it interrupted before its reconciler starts, never applies the dead trial's
configuration, puts the fleet back on the last safe configuration, and lets a person resume the
run (the same study, no told trial repeated) or discard it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.spec import Knobs, resolve_spec
from runtime.fleet import Fleet
from store import configs
from store.db import Store, sqlite_url
from store.models import ConfigVersion, TuningRun
from tests.integration.test_up import attached_spec, client, slatune_up
from tests.promstack import free_port

pytestmark = pytest.mark.integration

MODELS = resolve_spec(None).model_names


def tuner_versions(store: Store, since: float) -> list[tuple[str, ConfigVersion]]:
    with store.session() as session:
        return [
            (m, v) for m in MODELS for v in configs.history(session, m) if v.actor == "tuner" and v.created_at >= since
        ]  # fmt: skip


def wait_for(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def trials(api: httpx.Client, run_id: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = api.get(f"/tuning/{run_id}").json()["trials"]
    return out


def test_a_run_whose_process_died_is_interrupted_its_trial_never_applied_then_resumed_or_discarded(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "plane"
    data_dir.mkdir()
    port = free_port()
    store = Store(sqlite_url(data_dir))
    with Fleet(resolve_spec(None), tmp_path / "fleet") as fleet:  # outlives the killed process
        spec = attached_spec(fleet, tmp_path)
        safe = {m: fleet.observed_knobs(m) for m in MODELS}  # what ran before the run
        with slatune_up(data_dir, port, "-s", str(spec)) as proc, client(port) as api:
            r = api.post("/tuning", json={"budget": 4, "window_s": 2, "warmup_s": 0, "seed": 7})
            assert r.status_code == 202, r.text
            run_id, started_at = r.json()["id"], r.json()["started_at"]
            # The baseline (trial 0) changes nothing; the moment trial 1's versions are recorded,
            # the process dies.
            wait_for("trial 1's desired versions", lambda: tuner_versions(store, started_at), 60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        killed_at = time.time()
        with store.session() as session:
            run = session.get(TuningRun, run_id)
            assert run is not None and run.status == "running"  # what the dead process left
        trial_versions = {v.id for _, v in tuner_versions(store, started_at)}
        time.sleep(3)  # whatever Triton received finishes loading

        with slatune_up(data_dir, port, "-s", str(spec)), client(port) as api:
            got = api.get(f"/tuning/{run_id}").json()
            assert got["status"] == "interrupted", got
            states = {t["number"]: t["state"] for t in got["trials"]}
            assert states[0] == "COMPLETE" and "RUNNING" not in states.values(), states
            # None of the dead trial's versions is waiting: each was applied before the crash, or
            # superseded (by the interruption, naming the run, or by what start-up found running).
            for m, v in tuner_versions(store, started_at):
                if v.id in trial_versions:
                    assert v.state != "desired", (m, v.id, v.state)
                    if v.state == "superseded" and v.applied_at is None:
                        why = v.error or ""
                        assert f"tuning run {run_id} was interrupted" in why or "overtaken by" in why, why
            # The fleet runs the last safe configuration, read back from Triton.
            wait_for(
                "the last safe configuration",
                lambda: all(
                    (c := api.get(f"/models/{m}/config").json())["desired"] is None
                    and Knobs.model_validate(c["running"]) == safe[m]
                    for m in MODELS
                ),
                60,
            )
            assert {m: fleet.observed_knobs(m) for m in MODELS} == safe
            restores = [v for _, v in tuner_versions(store, killed_at) if v.id not in trial_versions]
            assert all(f"tuning run {run_id} was interrupted" in v.reason for v in restores), restores

            # Discarding needs an interrupted or stopped run; stopping needs a running one.
            r = api.post(f"/tuning/{run_id}/stop")
            assert r.status_code == 409 and "status interrupted" in r.json()["error"], r.text
            assert r.json()["field"] == "path.run_id"

            # Resume: the same run and study, running again, measuring a trial it never told.
            r = api.post(f"/tuning/{run_id}/resume")
            assert r.status_code == 202, r.text
            assert r.json()["id"] == run_id and r.json()["status"] == "running"
            again = api.post(f"/tuning/{run_id}/resume")
            assert again.status_code == 409 and "is running" in again.json()["error"], again.text
            assert again.json()["field"] == "path.run_id"
            told = max(states)
            wait_for(
                "a new trial measured",
                lambda: any(t["number"] > told and t["state"] == "COMPLETE" for t in trials(api, run_id)),
                60,
            )
            numbers = [t["number"] for t in trials(api, run_id)]
            assert numbers == sorted(set(numbers)) and states[0] == "COMPLETE"  # nothing told twice
            assert api.post(f"/tuning/{run_id}/stop").status_code == 202
            wait_for(
                "the run to stop", lambda: api.get(f"/tuning/{run_id}").json()["status"] != "running", 60
            )

            # Discard: for the record only; the study stays, and so does the run's last word.
            r = api.post(f"/tuning/{run_id}/discard")
            if r.status_code == 409:  # it had completed its budget before the stop
                assert "is completed" in r.json()["error"], r.text
            else:
                assert r.status_code == 200 and r.json()["status"] == "discarded", r.text
                assert api.get(f"/tuning/{run_id}").json()["trials"]
                r = api.post(f"/tuning/{run_id}/resume")
                assert r.status_code == 409 and "is discarded" in r.json()["error"], r.text
            assert api.post(f"/tuning/{run_id}/discard").status_code == 409
            assert api.post("/tuning/999999/discard").status_code == 404
    store.dispose()
