"""`make bench`'s wide scenario (issue 16, part 3): what one worker process carries with
1,000 calls in flight.

The farm and plain Celery (ops/baseline.py), one worker process each, the threads pool with
FARM_BENCH_WIDE_CONCURRENCY (1000) threads, call a simulator answering in a fixed 1 s:
FARM_BENCH_WIDE_JOBS (5000) jobs a run, the variants alternating (farm, plain, ceiling,
loop; then plain, ceiling, loop, farm; …, FARM_BENCH_ROUNDS rounds: procs.in_turn) so
drift on a noisy machine, and the place in a round, hit them all. The
third, the ceiling, is plain Celery's task calling through the farm's client layout
(farm.provider.clients) and doing nothing else of the farm: the most a Celery task making
this SDK call in its own thread reaches in one process, which no farm job, doing more, can
pass. The fourth, loop, is plain Celery's task handing its call to one asyncio event loop
in the worker (the SDK's AsyncAnthropic) and waiting for it: what an asyncio execution
path for the calls would reach under Celery's threads pool (issue 16, part 3). At 1000
calls in flight and 1 s the provider would allow 1000 jobs/s: the bound is the worker
process (one interpreter for 1000 threads, on cores shared with Postgres, Valkey, the
simulator and the submitter), and that is what the scenario measures.

`complexity: simple` is given, as in the latency scenario, so the router does not run: its
CPU is the cpu scenario's subject, and here the question is how many calls one process
keeps going; leaving the router out keeps the two goals apart. Admission (limiter and
breaker) and the farm's two statements per job run on every job, task events are on for
both (FARM_BENCH_EVENTS).

Nothing but the process may cap it, so both workers' pools are sized to their threads:
  * the farm's worker sizes its pools from its -c (farm.worker.runtime.size): its SDK
    clients, one per 10 threads, each keeping its threads' connections alive
    (farm.provider.clients), and its Redis client's C + 32 connections. FARM_SLOTS is
    fixed (bench.main): 1000 slots, a prefetch of 1000. Postgres keeps the default pool
    (FARM_DB_POOL_SIZE 10: up to 30 connections, kept once opened): a job holds a
    connection only for each of its two statements, never across its call;
  * plain Celery uses the SDK's default client (ops/baseline.py says why), and its
    completion counter's Redis client gets C + 32 connections: redis-py's default of 100
    fails a task when more than 100 threads record a completion at once;
  * the simulator (aiohttp, one event loop, a listen backlog of 4096) takes every
    connection; its most calls in flight at once (/_sim/stats, reset before each run) are
    printed per run: the proof that the C calls were in flight together;
  * open files: a worker holds about 2 C + 100 descriptors, the simulator C + 100; the soft
    limit is raised to 4 C + 1024 (within the hard limit) before the embedded servers and
    the workers start (``open_files``, from bench.main), and Valkey's maxclients printed.

Figures per variant, medians of the rounds: end-to-end jobs/s (N over the first publish to
the last job's own completion time, as in the cpu scenario: no poll interval, no final
read), steady jobs/s (10 % to 90 % of the completions), the worker's CPU ms per job and its
peak RSS (the largest of the rounds). The goal (issue 16: "C=1000, 1 s latency, one worker
process: >= 2x what plain Celery's threads pool reaches at the same settings") is read on
the end-to-end ratio farm / plain, the issue's own measure (jobs over the run's time), which
counts all the farm does for a job, its submitter's validating and recording included; the
steady ratio is printed beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import procs  # ops/, this script's directory
import redis

from farm import services

N = int(os.environ.get("FARM_BENCH_WIDE_JOBS", "5000"))
CONCURRENCY = int(os.environ.get("FARM_BENCH_WIDE_CONCURRENCY", "1000"))
LATENCY_S = 1.0
GOAL = 2.0  # end-to-end jobs/s farm / plain Celery at least
FILES = 4 * CONCURRENCY + 1024  # open files wanted: a worker's ~2 C + 100, the sim's ~C + 100


class Measured(Protocol):
    """What a run reports (bench.Result)."""

    variant: str
    jobs_per_s: float
    completed_jobs_per_s: float
    cpu_s_per_job: float
    peak_rss_mb: float


# (env, log, jobs, concurrency) -> the run's figures: bench.run_farm or bench.run_baseline
Runner = Callable[[dict[str, str], Path, int, int], Measured]


@dataclass(frozen=True)
class Context:
    env: dict[str, str]
    logs: Path
    rounds: int
    pool: str
    farm: Runner
    plain: Runner
    ceiling: Runner  # plain Celery through the farm's client layout, nothing else of it
    looped: Runner  # plain Celery with its calls on one asyncio event loop


@dataclass(frozen=True)
class Run:
    result: Measured
    in_flight: int  # the simulator's most calls in flight at once during the run


def open_files() -> None:
    """Raise the open-files limit for the workers and servers started after this; say so
    when the hard limit does not allow what the scenario needs."""
    got = procs.open_files_at_least(FILES)
    if got < FILES:
        print(f"bench wide: open files limited to {got} (hard limit), {FILES} wanted: "
              f"connections may fail at concurrency {CONCURRENCY}", file=sys.stderr)


def _sim(port: int, action: str) -> dict[str, Any]:
    method = "POST" if action == "reset" else "GET"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_sim/{action}", method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        found: dict[str, Any] = json.loads(resp.read())
    return found


def _maxclients(broker_url: str) -> str:
    client = redis.Redis.from_url(broker_url)
    try:
        return str(client.config_get("maxclients").get("maxclients", "?"))
    except redis.RedisError as exc:  # a managed Redis may refuse CONFIG
        return f"unknown ({type(exc).__name__})"
    finally:
        client.close()


def run(ctx: Context, broker_url: str) -> float:
    """Alternating rounds of the farm and plain Celery; per-run lines, the medians, the goal
    line. Returns the end-to-end ratio farm / plain."""
    port = services.free_port()
    env = {**ctx.env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
    sim = procs.start_sim(port, ["--latency", str(LATENCY_S)], env=env)
    runs: list[Run] = []
    try:
        print(f"bench wide: {N} jobs per run, concurrency {CONCURRENCY}, "
              f"{LATENCY_S:.0f} s simulated latency, {ctx.rounds} round(s), pool {ctx.pool}, "
              f"complexity given, on {os.cpu_count()} cores; open files "
              f"{procs.open_files_at_least(FILES)}, Valkey maxclients "
              f"{_maxclients(broker_url)}")
        for round_no in range(ctx.rounds):
            for name, runner in procs.in_turn((("farm", ctx.farm), ("plain", ctx.plain),
                                                ("ceiling", ctx.ceiling),
                                                ("loop", ctx.looped)), round_no):
                _sim(port, "reset")
                r = runner(env, ctx.logs / f"bench-wide-{name}.log", N, CONCURRENCY)
                flight = int(_sim(port, "stats")["max_in_flight"])
                runs.append(Run(r, flight))
                print(f"  round {round_no + 1} {r.variant:<28} {r.completed_jobs_per_s:7.1f} "
                      f"jobs/s end to end ({r.jobs_per_s:6.1f} steady)  "
                      f"{1000 * r.cpu_s_per_job:6.2f} ms CPU/job  {r.peak_rss_mb:6.1f} MB  "
                      f"{flight} calls in flight at most")
    finally:
        procs.stop_all([sim], grace=10)
    return table(runs, ctx.pool)


def table(runs: list[Run], pool: str) -> float:
    """The medians per variant, the ratios, the goal line; the end-to-end ratio."""
    print(f"\nwide scenario (C={CONCURRENCY}), medians of the rounds:")
    print(f"{'variant':<30}{'end-to-end':>12}{'steady':>9}{'CPU ms/job':>12}"
          f"{'peak RSS MB':>13}{'in flight':>11}")
    rows: dict[str, tuple[float, float, float, float]] = {}
    for variant in dict.fromkeys(run.result.variant for run in runs):
        rs = [run for run in runs if run.result.variant == variant]
        rows[variant] = (statistics.median(r.result.completed_jobs_per_s for r in rs),
                         statistics.median(r.result.jobs_per_s for r in rs),
                         statistics.median(r.result.cpu_s_per_job for r in rs),
                         max(r.result.peak_rss_mb for r in rs))
        e2e, steady, cpu, rss = rows[variant]
        print(f"{variant:<30}{e2e:>12.1f}{steady:>9.1f}{1000 * cpu:>12.2f}{rss:>13.1f}"
              f"{min(r.in_flight for r in rs):>11}")
    f, b = rows[f"farm/{pool}"], rows[f"plain-celery/{pool}"]
    print(f"{'farm / plain':<30}" + "".join(f"{x / y:>{w}.3f}" for x, y, w in zip(
        f, b, (12, 9, 12, 13), strict=True)))
    ratio = f[0] / b[0]
    top = rows.get(f"plain-celery+clients/{pool}")
    if top is not None:
        print(f"ceiling: a bare Celery task making the same SDK call through the farm's client "
              f"layout reaches {top[0]:.1f} jobs/s = {top[0] / b[0]:.2f}x plain (the farm: "
              f"{f[0] / top[0]:.2f}x of it)")
    loop = rows.get(f"plain-celery+loop/{pool}")
    if loop is not None:
        print(f"asyncio: a bare Celery task whose call runs on one event loop in the worker "
              f"reaches {loop[0]:.1f} jobs/s = {loop[0] / b[0]:.2f}x plain")
    print(f"wide goal (C={CONCURRENCY}, 1 s latency, one process): farm {f[0]:.1f} jobs/s end "
          f"to end = {ratio:.2f}x plain Celery's {b[0]:.1f} ({pool}); goal >= {GOAL:.2f}x: "
          f"{'met' if ratio >= GOAL else 'NOT MET'} (steady {f[1] / b[1]:.2f}x)")
    return ratio


if __name__ == "__main__":
    import subprocess

    print("run `make bench` (FARM_BENCH_SCENARIOS=wide for this scenario alone)")
    sys.exit(subprocess.call([sys.executable, str(Path(__file__).with_name("bench.py"))],
                             env={**os.environ, "FARM_BENCH_SCENARIOS": "wide"}))
