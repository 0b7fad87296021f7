"""Where benchmark figures go: a JSON file per benchmark, and a section of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

DOC = Path("docs/benchmarks.md")
HEADER = "# slatune benchmarks\n\nEach section is rewritten by the benchmark that measures it; the JSON beside it holds every figure.\n"


def num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write(
    out: Path, title: str, figures: dict[str, Any], body_md: str, command: str, doc: Path = DOC
) -> None:
    """Save `figures` as JSON at `out` and replace the `title` section of the benchmarks page."""
    figures = {**figures, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    section = (
        f"## {title}\n\n`{command}` on {figures['measured_at']}; figures: `{out}`.\n\n{body_md.strip()}\n"
    )
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
