"""The keyword rules the learned router replaced (farm/routing/classify.py at ec6d041), on
the same labelled data and the independent set, for the README's before/after figures.

    .venv/bin/python ops/router/old_rules.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

from farm.jobs import JobRequest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "farm" / "routing" / "data"
BEFORE = "ec6d041"


def old_classify() -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:farm/routing/classify.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("old_classify")
    sys.modules["old_classify"] = module  # dataclasses look their module up
    exec(compile(source, "old_classify.py", "exec"), module.__dict__)  # our own file, at a commit
    return module


def main() -> None:
    classify = old_classify().classify
    for name in ("labelled.jsonl", "independent.jsonl"):
        n, right = Counter[str](), Counter[str]()
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            request = JobRequest(prompt=row["prompt"], system=row.get("system"),
                                 max_tokens=row.get("max_tokens", 1024))
            n[row["label"]] += 1
            right[row["label"]] += classify(request)[0].value == row["label"]
        total = sum(n.values())
        print(f"{name}: {total} jobs, accuracy {sum(right.values()) / total:.1%}, "
              f"complex recall {right['complex'] / n['complex']:.1%}")


if __name__ == "__main__":
    main()
