"""The resident memory a farm worker's imports add, step by step, in one process.

A worker's peak RSS (`make bench`, latency scenario) is mostly what it imports: this prints
what Celery's worker, kombu's Redis transport and the SDK take (plain Celery's worker has
those too), then what each of the farm's further imports adds, in the order a farm worker
loads them, and the farm's total beyond the first three; last, what SQLAlchemy would add
(a worker's statements run on farm.store.db, psycopg alone).

    .venv/bin/python ops/bench_imports.py
"""

from __future__ import annotations

import importlib
import sys

SHARED = ("celery.worker", "kombu.transport.redis", "anthropic")
FARM = ("psycopg", "pydantic_settings", "farm.settings", "farm.worker.wiring")
# what a worker imported before its statements moved to farm.store.db, for comparison
BEFORE = ("sqlalchemy", "sqlalchemy.dialects.postgresql.psycopg")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    for group in (SHARED, FARM, BEFORE):
        start = previous = rss_mb()
        for name in group:
            importlib.import_module(name)
            now = rss_mb()
            print(f"  {name:42s} +{now - previous:5.1f} MB")
            previous = now
        if group is FARM:
            loaded = any(m.split(".")[0] == "sqlalchemy" for m in sys.modules)
            print(f"  (a worker's imports load SQLAlchemy: {loaded})")
        label = {SHARED: "shared with plain Celery", FARM: "the farm beyond them",
                 BEFORE: "SQLAlchemy, which a worker no longer imports"}[group]
        print(f"{label}: +{previous - start:.1f} MB (process {previous:.1f} MB)")


if __name__ == "__main__":
    main()
