"""Build farm/routing/data/labelled.jsonl from the writers' files in ops/router/sources.

Each writer was given only farm/routing/data/RUBRIC.md (never the router, its features or
the other writers' prompts). A row's split comes from its id (farm.routing.train.split_of),
so adding a writer never moves an earlier row between splits. About one row in five gets an
explicit max_tokens, drawn by a generator seeded with the row's id, whatever its label.

    .venv/bin/python ops/router/assemble.py
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from farm.routing.train import split_of

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "ops" / "router" / "sources"
OUT = ROOT / "farm" / "routing" / "data" / "labelled.jsonl"
KEYS = ("id", "family", "split", "label", "prompt", "system", "max_tokens", "note")
BUDGETS = (256, 512, 1024, 2048, 4096, 8192)


def main() -> None:
    rows = [json.loads(line) for path in sorted(SOURCES.glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    unique = []
    for row in sorted(rows, key=lambda r: r["id"]):  # the same prompt twice: the first id
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            unique.append(row)
    rows = unique
    for row in rows:
        row["split"] = split_of(row["id"])
        rng = random.Random(hashlib.sha256(("mt" + row["id"]).encode()).digest())
        if rng.random() < 0.2:
            row["max_tokens"] = rng.choice(BUDGETS)
    ids = Counter(r["id"] for r in rows)
    if dupes := [i for i, n in ids.items() if n > 1]:
        raise SystemExit(f"duplicate ids: {dupes[:5]}")
    with OUT.open("w") as out:
        for row in sorted(rows, key=lambda r: r["id"]):
            out.write(json.dumps({k: row[k] for k in KEYS if k in row}, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows -> {OUT}:",
          dict(sorted(Counter((r["split"], r["label"]) for r in rows).items())))


if __name__ == "__main__":
    main()
