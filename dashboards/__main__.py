"""`python -m dashboards`: write the generated dashboards (dashboards/json/) and Prometheus rules
(deploy/prometheus/slatune-rules.yml), which are committed; `--check` only says whether they are
current (exit 1 when not)."""

from __future__ import annotations

import sys
from pathlib import Path

from dashboards.build import dumps, render
from dashboards.rules import rules_yaml

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = Path(__file__).resolve().parent / "json"
RULES_PATH = ROOT / "deploy" / "prometheus" / "slatune-rules.yml"


def generated() -> dict[Path, str]:
    out = {JSON_DIR / f"{stem}.json": dumps(model) for stem, model in render().items()}
    out[RULES_PATH] = rules_yaml()
    return out


def main(argv: list[str]) -> int:
    stale = [p for p, text in generated().items() if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is not what dashboards/ generates: run python -m dashboards")
        return 1 if stale else 0
    for p, text in generated().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
