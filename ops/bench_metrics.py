"""The CPU the worker metrics add per job, counted in one process: the signals a successful
job sends (call started, call finished with its cost and tokens, job finished), timed with
nobody listening and with a worker's metrics connected (``time.process_time``; 3 rounds of
FARM_BENCH_JOBS, default 100,000). `make bench` with FARM_BENCH_METRICS=both measures the
same on a real worker, where the machine's noise is larger than this."""

from __future__ import annotations

import os
import time
from decimal import Decimal

from farm.jobs import Usage
from farm.observe.metrics import WorkerMetrics
from farm.worker import events

N = int(os.environ.get("FARM_BENCH_JOBS", "100000"))
USAGE = Usage(input_tokens=120, output_tokens=40)


def one_job(i: int) -> None:
    events.call_started.send(None, model="claude-haiku-4-5")
    events.call_finished.send(None, model="claude-haiku-4-5", queue="haiku-simple",
                              tenant=f"t{i % 30}", outcome="ok", latency_s=1.0, usage=USAGE,
                              cost=Decimal("0.000158"))
    events.job_finished.send(None, queue="haiku-simple", model="claude-haiku-4-5",
                             outcome="succeeded", duration_s=1.2)


def cpu_per_job(n: int) -> float:
    started = time.process_time()
    for i in range(n):
        one_job(i)
    return (time.process_time() - started) / n


def main() -> None:
    for round_no in range(3):
        off = cpu_per_job(N)
        metrics = WorkerMetrics(lambda: {"haiku-simple": (100, 3)}).connect()
        try:
            on = cpu_per_job(N)
        finally:
            metrics.disconnect()
        print(f"round {round_no + 1}: {1e6 * off:.1f} µs CPU/job with nobody listening, "
              f"{1e6 * on:.1f} µs with the metrics: {1e6 * (on - off):.1f} µs added")


if __name__ == "__main__":
    main()
