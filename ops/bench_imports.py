"""The resident memory a farm worker's imports add, step by step, in one process.

A worker's peak RSS (`make bench`, latency scenario) is mostly what it imports: this prints
what Celery's worker, kombu's Redis transport and the SDK take (plain Celery's worker has
those too), then what each of the farm's further imports adds, in the order a farm worker
loads them, and the farm's total beyond the first three.

    .venv/bin/python ops/bench_imports.py
"""

from __future__ import annotations

import importlib
import sys

SHARED = ("celery.worker", "kombu.transport.redis", "anthropic")
FARM = ("sqlalchemy", "sqlalchemy.dialects.postgresql.psycopg", "psycopg", "pydantic_settings",
        "farm.settings", "farm.worker.wiring")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    for group in (SHARED, FARM):
        start = previous = rss_mb()
        for name in group:
            importlib.import_module(name)
            now = rss_mb()
            print(f"  {name:42s} +{now - previous:5.1f} MB")
            previous = now
        print(f"{'shared with plain Celery' if group is SHARED else 'the farm beyond them'}: "
              f"+{previous - start:.1f} MB (process {previous:.1f} MB)")
    print("sqlalchemy.orm imported:", any(m.startswith("sqlalchemy.orm") for m in sys.modules))


if __name__ == "__main__":
    main()
