"""The planner through the command line and the real store (SQLite and PostgreSQL): a learned
cannot-share rule changes the next plan, the specs it writes are fleets `slatune` accepts, and an
inventory that cannot be placed is refused naming the model and the rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from store import packing
from store.db import Store


def _slatune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def _plan(store_url: str) -> dict[str, Any]:
    done = _slatune("plan", "seed", "--json", "--database-url", store_url)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _where(plan: dict[str, Any]) -> dict[str, str]:
    return {p["model"]: p["device"] for p in plan["placement"]}


def test_a_learned_cannot_share_rule_changes_the_next_plan(store: Store, store_url: str) -> None:
    before = _plan(store_url)
    assert (before["devices"], before["lower_bound"], before["naive"]) == (2, 2, 5)
    where = _where(before)
    assert where["chat-llm"] != where["chat-llm-v3"]
    # The plan put the guard beside a bulk model; the controller then measured that it cannot share.
    bulk = next(m for m in ("embeddings", "reranker") if where[m] == where["safety-guard"])
    with store.session() as session:
        packing.record_cannot_share(
            session, "safety-guard", bulk, source="controller", now=time.time(),
            summary=f"safety-guard p99 31 ms against 20 with every protective step in force; cannot share with {bulk}",
            evidence={"p99_ms": 31.0, "sla_target_ms": 20.0},
        )  # fmt: skip
    after = _plan(store_url)
    assert after["devices"] == 2
    assert _where(after)["safety-guard"] != _where(after)[bulk]
    assert any(f"learned: {min(bulk, 'safety-guard')} cannot share with" in r for r in after["reasons"])


def test_the_written_specs_are_fleets_slatune_accepts(tmp_path: Path) -> None:
    done = _slatune("plan", "seed", "--no-learned", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 device(s) (optimal); lower bound by memory 2; one per model 5" in done.stdout
    assert "kept apart by chat-llm.placement.apart_from[llm]" in done.stdout
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["seed-triton-dev-0.yaml", "seed-triton-dev-1.yaml", "seed.yaml"]
    whole = yaml.safe_load((tmp_path / "seed.yaml").read_text())
    assert [s["name"] for s in whole["servers"]] == ["triton-dev-0", "triton-dev-1"]
    assert [d.get("cores") for d in whole["devices"]] == [[0], [1]]  # one core each: devices apart for real
    for name in written:
        check = _slatune("fleet", "check", "--spec", str(tmp_path / name))
        assert check.returncode == 0, check.stdout + check.stderr


def test_an_inventory_that_cannot_be_placed_names_the_model_and_the_rule(tmp_path: Path) -> None:
    inv = {
        "name": "tight",
        "devices": [{"name": "gpu", "kind": "gpu", "memory_gb": 80, "count": 1}],
        "models": [
            {"name": "chat", "role": "bulk", "source": {"builtin": "chat"}, "memory_gb_per_instance": 40,
             "placement": {"whole_device": True}},
            {"name": "embed", "role": "bulk", "source": {"builtin": "embedder"}, "memory_gb_per_instance": 2},
        ],
    }  # fmt: skip
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(inv))
    done = _slatune("plan", str(path), "--no-learned")
    assert done.returncode == 2
    assert "chat.placement.whole_device" in done.stdout and "1 x gpu (80 GB)" in done.stdout
    inv["models"][0]["memory_gb_per_instance"] = 90
    path.write_text(yaml.safe_dump(inv))
    done = _slatune("plan", str(path), "--no-learned")
    assert done.returncode == 2 and "model 'chat'" in done.stdout and "90 GB" in done.stdout
    inv["models"][0]["placement"] = {"apart_from": ["nobody"]}
    path.write_text(yaml.safe_dump(inv))
    done = _slatune("plan", str(path), "--no-learned")
    assert done.returncode == 2 and "models[0](chat).placement.apart_from[0]" in done.stdout
