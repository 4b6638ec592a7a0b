"""The CPU of one job's admission and end in the gate, counted in one process: a Gate on
the farm's Redis admits a job and finishes its call, FARM_BENCH_JOBS (2000) times a round,
with the breaker and the limiter asked separately (four EVALSHA a job) and paired (two:
farm.capacity.combined), rounds alternating; the model has rpm, itpm and otpm limits far
above the run, so the limiter's scripts run in full. `time.process_time` per job, and the
wall time (the round trips' latency included).

    .venv/bin/python ops/bench_gate.py      # Redis: FARM_BROKER_URL, else the embedded one
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import redis

from farm.capacity.admission import AdmissionConfig, Gate
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import BreakerConfig
from farm.capacity.combined import Paired
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.limiter import Limiter
from farm.jobs import JobRequest, Usage
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.jobs import StartedJob

N = int(os.environ.get("FARM_BENCH_JOBS", "2000"))
ROUNDS = 3
MODEL = "claude-haiku-4-5"
USAGE = Usage(input_tokens=12, output_tokens=8)


def per_job(client: redis.Redis, paired: bool) -> tuple[float, float]:
    """(CPU s, wall s) per admit + done."""
    prefix = f"bench-gate:{uuid.uuid4().hex[:8]}"
    limits = {MODEL: ModelLimits(rpm=10**7, itpm=10**9, otpm=10**9)}
    limiter = Limiter(client, LimiterConfig(models=limits, discovery_slots=0), f"{prefix}:lim")
    breaker = Breaker(client, BreakerConfig(), f"{prefix}:brk")
    gate = Gate(limiter, breaker, AdmissionConfig(),
                pair=Paired(limiter, breaker) if paired else None)
    job = StartedJob(uuid.uuid4(), JobRequest(prompt="Say hi.", tenant="bench"), "haiku-simple",
                     MODEL, 1, created_at=datetime.now(UTC))
    try:
        for _ in range(50):  # scripts loaded, connections made
            gate.done(gate.admit(job), USAGE, {})  # type: ignore[arg-type]
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(N):
            gate.done(gate.admit(job), USAGE, {})  # type: ignore[arg-type]
        return (time.process_time() - cpu) / N, (time.perf_counter() - wall) / N
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def main() -> None:
    client = redis.Redis.from_url(resolve_urls(Settings()).broker_url)
    seen: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for round_no in range(ROUNDS):
        for paired in (False, True):
            cpu, wall = per_job(client, paired)
            seen[paired].append((cpu, wall))
            print(f"round {round_no + 1} {'paired  ' if paired else 'separate'}: "
                  f"{1e6 * cpu:6.0f} µs CPU/job, {1e6 * wall:6.0f} µs wall/job")
    for paired in (False, True):
        cpu = statistics.median(c for c, _ in seen[paired])
        wall = statistics.median(w for _, w in seen[paired])
        print(f"median {'paired  ' if paired else 'separate'}: {1e6 * cpu:6.0f} µs CPU/job, "
              f"{1e6 * wall:6.0f} µs wall/job")
    client.close()


if __name__ == "__main__":
    main()
