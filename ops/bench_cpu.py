"""`make bench`'s CPU-bound scenario: short provider latency, thousands of jobs, the realistic
path on, and the CPU every process involved spends per job.

The farm and plain Celery (ops/baseline.py), one worker process each (same pool and
concurrency as the latency scenario), call a simulator answering in a fixed 50 ms
(FARM_BENCH_CPU_LATENCY), so the provider is no bottleneck and the machine's CPU is. The
farm runs its realistic path: the router classifies every job (no complexity given), the
model has limits configured (FARM_LIMITS: rpm, itpm and otpm far above what the run uses, so
they never bind but the limiter acquires and releases for every call), task events are on
for both variants (FARM_BENCH_EVENTS).

The prompts are realistic and short: the labelled routing data's simple prompts
(farm/routing/data/labelled.jsonl) of at most 300 characters, with their system prompts,
that the shipped router sends to the simple queue (a few simple-labelled ones go to the
complex queue; the split is printed and those are left out, as the worker serves the simple
queue only). Jobs cycle through them; plain Celery sends the same prompts and system prompts.

Each run: a fresh worker, a warm-up of CONCURRENCY jobs (the worker's client, database and
broker pools grown to their size; not measured), then FARM_BENCH_CPU_JOBS (3000) jobs.
*End to end* is N / (first submit .. last completion): the farm's last finished_at in
Postgres, the baseline's last completion time in Redis; *steady* as in the latency scenario.

CPU seconds per job of every process involved: ops/proctime.py says how each is counted.

Each round also prints, sampled once a second, what waited in the queue and what the worker
held (ops/backlog.py: the queue's lists and kombu's unacked hash; medians over the samples with
at least CONCURRENCY waiting), and for the farm how many of its jobs were running (status
running, while more than the worker's slots were unfinished; the median): a worker holding
far fewer than its slots while a backlog waits is bound by its consumer.
The farm's postgres figure includes the bench's completion polls (one query a second over
the jobs not finished yet), both redis figures the backlog sample (one pipelined read a
second) and the baseline's also its completion poll (an LLEN a second). Servers not
embedded (FARM_BROKER_URL / FARM_DATABASE_URL set) cannot be sampled: shown as n/a.

Environment: FARM_BENCH_CPU_JOBS (3000), FARM_BENCH_CPU_LATENCY (0.05 s); the rest is the
latency scenario's (rounds, concurrency, first pool, events).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procs  # ops/, this script's directory
import redis
from backlog import Backlog, plain_keys
from proctime import KERNEL, server_pids, worker_cpu

from farm import services
from farm.broker.layout import queue_keys
from farm.client import Farm
from farm.routing.route import parse_and_route
from farm.settings import Settings
from farm.store.jobs import unfinished
from farm.worker.command import worker_argv

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("FARM_BENCH_CPU_JOBS", "3000"))
LATENCY_S = float(os.environ.get("FARM_BENCH_CPU_LATENCY", "0.05"))
PROMPT_CHARS = 300
MAX_TOKENS = 64
MODEL = "claude-haiku-4-5"  # the simple queue's model, and the baseline's
# far above anything the run uses: they never bind, but the limiter runs on every call
LIMITS = {MODEL: {"rpm": 10_000_000, "itpm": 10_000_000_000, "otpm": 10_000_000_000}}
PROCS = ("worker", "postgres", "redis", "sim", "submitter")
RUNNING_SQL = "SELECT count(*) FROM jobs WHERE status = 'running'"


@dataclass
class Context:
    settings: Settings
    env: dict[str, str]
    broker_url: str
    logs: Path
    concurrency: int
    rounds: int
    pool: str
    events: bool


@dataclass
class Result:
    variant: str
    end_to_end: float  # jobs/s, first submit .. last completion
    steady: float  # jobs/s, 10 % .. 90 % completion
    cpu: dict[str, float | None] = field(default_factory=dict)  # CPU s per job, by process
    # the farm's jobs running at once (status running), median of the 1 s samples taken
    # while more than the worker's slots were still unfinished; None for plain Celery
    running: float | None = None
    backlog: tuple[float, float] | None = None  # (waiting, held) under a backlog, medians


def steady_rate(finished: list[float]) -> float:
    """Completion rate between the 10% and the 90% completion times."""
    times = sorted(finished)
    lo, hi = len(times) // 10, (9 * len(times)) // 10
    return (hi - lo) / (times[hi] - times[lo])


# --- the workload ----------------------------------------------------------------------

def prompts(settings: Settings) -> list[dict[str, str]]:
    """The short simple-labelled prompts the router sends to the simple queue; the split of
    all of them printed."""
    rows = [json.loads(line) for line in
            (ROOT / "farm/routing/data/labelled.jsonl").read_text().splitlines() if line]
    chosen: list[dict[str, str]] = []
    split: dict[str, int] = {}
    for row in rows:
        if row["label"] != "simple" or len(row["prompt"]) > PROMPT_CHARS:
            continue
        job = {"prompt": row["prompt"], **({"system": row["system"]} if row.get("system")
                                           else {})}
        queue = parse_and_route({**job, "max_tokens": MAX_TOKENS}, settings.queues)[1].queue
        split[queue] = split.get(queue, 0) + 1
        if queue == "haiku-simple":
            chosen.append(job)
    print(f"  prompts: the {sum(split.values())} simple-labelled prompts of at most "
          f"{PROMPT_CHARS} chars route {split}; the bench cycles through the "
          f"{len(chosen)} routed simple")
    return chosen


def _jobs(pool: list[dict[str, str]], n: int, offset: int = 0) -> list[dict[str, str]]:
    return [pool[(offset + i) % len(pool)] for i in range(n)]


def _per_job(before: dict[str, float | None], after: dict[str, float | None], n: int
             ) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, b in before.items():
        a = after.get(name)
        out[name] = None if a is None or b is None else (a - b) / n
    return out


def run_farm(ctx: Context, pool: list[dict[str, str]], roots: dict[str, int | None],
             log: Path) -> Result:
    env = {**ctx.env, "FARM_LIMITS": json.dumps(LIMITS)}
    argv = worker_argv("haiku-simple", concurrency=ctx.concurrency, pool=ctx.pool,
                       events=False, name=f"bench-cpu-{uuid.uuid4().hex[:6]}@%h")
    [worker] = procs.start_ready([argv], [log], env=env, cwd=ROOT)
    bucket = f"farm:lim:m:{MODEL}:bucket"
    r = redis.Redis.from_url(ctx.broker_url)
    try:
        with Farm(ctx.settings) as farm:
            def submit(jobs: list[dict[str, str]]) -> list[uuid.UUID]:
                return farm.submit_many([{**j, "max_tokens": MAX_TOKENS, "tenant": "bench"}
                                         for j in jobs])

            farm.wait(submit(_jobs(pool, ctx.concurrency, offset=N)), timeout=120)  # warm-up
            r.delete(bucket)  # the measured run's calls make it again
            jobs = _jobs(pool, N)
            before = worker_cpu(worker.pid, roots)
            start, cpu0 = time.time(), time.process_time()
            ids = submit(jobs)
            submitter = time.process_time() - cpu0
            pending, deadline = set(ids), time.monotonic() + 600
            running: list[int] = []
            backlog = Backlog(r, queue_keys("haiku-simple"))
            while pending:  # farm.wait's polls, without its final read of every job
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {len(pending)} farm jobs not finished in 600 s")
                time.sleep(1.0)
                backlog.sample()
                pending = unfinished(farm.db, list(pending))
                if len(pending) > ctx.concurrency:
                    with farm.db.connect() as conn:
                        running.append(int(conn.execute(RUNNING_SQL).fetchone()[0]))
            after = worker_cpu(worker.pid, roots)
            views = farm.statuses(ids)
        bad = [v for v in views if v.status.value != "succeeded"]
        if bad:
            raise SystemExit(f"bench: {len(bad)} farm jobs did not succeed: {bad[0].error}")
        queues = {q: sum(v.queue == q for v in views) for q in {v.queue for v in views}}
        if queues != {"haiku-simple": N}:
            raise SystemExit(f"bench: the farm's jobs went to {queues}, not all haiku-simple")
        if not r.hexists(bucket, "rpm"):
            raise SystemExit(f"bench: the limiter kept no rpm bucket for {MODEL}")
        finished = [v.finished_at.timestamp() for v in views if v.finished_at is not None]
        cpu = _per_job(before, after, N)
        cpu["submitter"] = submitter / N
        return Result(f"farm/{ctx.pool}", N / (max(finished) - start), steady_rate(finished),
                      cpu, statistics.median(running) if running else None,
                      backlog.under(ctx.concurrency))
    finally:
        procs.stop_all([worker])
        r.close()


def run_baseline(ctx: Context, pool: list[dict[str, str]], roots: dict[str, int | None],
                 log: Path) -> Result:
    from celery import Celery

    env = {**ctx.env, "BASELINE_BROKER_URL": ctx.broker_url}
    argv = worker_argv("baseline", concurrency=ctx.concurrency, pool=ctx.pool,
                       app="ops.baseline", events=ctx.events,
                       name=f"baseline-cpu-{uuid.uuid4().hex[:6]}@%h")
    [worker] = procs.start_ready([argv], [log], env=env, cwd=ROOT)
    counter = redis.Redis.from_url(ctx.broker_url)
    sender = Celery("bench-sender", broker=ctx.broker_url, set_as_current=False)
    sender.conf.task_serializer = "json"
    done: list[str] = []
    backlog = Backlog(counter, plain_keys("baseline"))

    def send(jobs: list[dict[str, str]], run: str) -> None:
        with sender.producer_or_acquire() as producer:
            for job in jobs:
                sender.send_task("baseline.call", queue="baseline", producer=producer,
                                 args=(job["prompt"], MAX_TOKENS, run, job.get("system")))

    def wait(run: str, n: int, sample: bool = False) -> None:
        deadline = time.monotonic() + 600
        while counter.llen(f"baseline:done:{run}") < n:
            if time.monotonic() > deadline:
                raise SystemExit("bench: baseline did not finish in 600 s")
            time.sleep(1.0)
            if sample:
                backlog.sample()

    try:
        warm, run = uuid.uuid4().hex, uuid.uuid4().hex
        done += [warm, run]
        with sender.connection_for_write() as conn:
            conn.ensure_connection()
        send(_jobs(pool, ctx.concurrency, offset=N), warm)
        wait(warm, ctx.concurrency)
        jobs = _jobs(pool, N)
        before = worker_cpu(worker.pid, roots)
        start, cpu0 = time.time(), time.process_time()
        send(jobs, run)
        submitter = time.process_time() - cpu0
        wait(run, N, sample=True)
        after = worker_cpu(worker.pid, roots)
        finished = [float(t) for t in counter.lrange(f"baseline:done:{run}", 0, -1)]
        cpu = _per_job(before, after, N)
        cpu["submitter"] = submitter / N
        return Result(f"plain-celery/{ctx.pool}", N / (max(finished) - start),
                      steady_rate(finished), cpu, backlog=backlog.under(ctx.concurrency))
    finally:
        procs.stop_all([worker])
        for key in done:
            counter.delete(f"baseline:done:{key}")
        counter.close()
        sender.close()


# --- the scenario ----------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{1000 * value:.3f}"


def _held(r: Result, slots: int) -> str:
    """What the worker held and ran while a backlog waited, as sampled (medians)."""
    running = "" if r.running is None else f", {r.running:.0f} running"
    if r.backlog is None:
        return f"(no sample with {slots} or more waiting{running})"
    waiting, held = r.backlog
    return (f"(while {waiting:.0f} waited in the queue: the worker held {held:.0f} of the "
            f"{slots} it may{running})")


def _total(cpu: dict[str, float | None]) -> float:
    return sum(v for p, v in cpu.items() if p in PROCS and v is not None)


def run(ctx: Context) -> list[Result]:
    """Alternating rounds of the farm and plain Celery; per-round lines, then the medians."""
    pool = prompts(ctx.settings)
    port = services.free_port()
    env = {**ctx.env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
    ctx = Context(ctx.settings.model_copy(update={"anthropic_base_url": env[
        "ANTHROPIC_BASE_URL"]}), env, ctx.broker_url, ctx.logs, ctx.concurrency, ctx.rounds,
        ctx.pool, ctx.events)
    sim = procs.start_sim(port, ["--latency", str(LATENCY_S)], env=env)
    roots = {**server_pids(ctx.settings), "sim": sim.pid}
    results: list[Result] = []
    try:
        print(f"bench cpu: {N} jobs per run (after a warm-up of {ctx.concurrency}), "
              f"concurrency {ctx.concurrency}, {1000 * LATENCY_S:.0f} ms simulated latency, "
              f"{ctx.rounds} round(s), pool {ctx.pool}, router on, limits on "
              f"({MODEL}), task events {'on' if ctx.events else 'off'}, "
              f"on {os.cpu_count()} cores")
        for round_no in range(ctx.rounds):
            for runner in procs.in_turn((run_farm, run_baseline), round_no):
                log = ctx.logs / f"bench-cpu-{runner.__name__}.log"
                r = runner(ctx, pool, roots, log)
                results.append(r)
                print(f"  round {round_no + 1} {r.variant:<20} {r.end_to_end:7.1f} jobs/s end "
                      f"to end ({r.steady:6.1f} steady)  CPU ms/job: "
                      + "  ".join(f"{p} {_ms(r.cpu.get(p))}" for p in (*PROCS[:1], KERNEL,
                                                                        *PROCS[1:]))
                      + f"  total {_ms(_total(r.cpu))}")
                print("    " + _held(r, ctx.concurrency))
    finally:
        procs.stop_all([sim], grace=10)
    table(results)
    return results


def table(results: list[Result]) -> None:
    medians: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r.variant for r in results):
        rs = [r for r in results if r.variant == variant]
        row: dict[str, Any] = {"e2e": statistics.median(r.end_to_end for r in rs),
                               "steady": statistics.median(r.steady for r in rs)}
        for p in (*PROCS, KERNEL, "total"):
            got = [(_total(r.cpu) if p == "total" else r.cpu.get(p)) for r in rs]
            row[p] = statistics.median(g for g in got if g is not None) if all(
                g is not None for g in got) else None
        row["cores"] = row["total"] * row["e2e"]  # CPU busy: those processes' cores in use
        medians[variant] = row
    cols = ("e2e", "steady", PROCS[0], KERNEL, *PROCS[1:], "total", "cores")
    print(f"\ncpu scenario, medians of {len(results) // max(1, len(medians))} round(s) "
          "(jobs/s end to end and steady; CPU ms per job by process; cores: total CPU per job "
          "x jobs/s end to end):")
    print(f"{'variant':<22}" + "".join(f"{c:>11}" for c in cols))
    for variant, row in medians.items():
        print(f"{variant:<22}" + "".join(
            f"{row[c]:>11.1f}" if c in ("e2e", "steady") else f"{row[c]:>11.2f}"
            if c == "cores" else f"{_ms(row[c]):>11}" for c in cols))
    farm = next((v for v in medians if v.startswith("farm")), None)
    plain = next((v for v in medians if v.startswith("plain")), None)
    if farm and plain:
        f, b = medians[farm], medians[plain]
        # n/a where plain Celery barely uses the process (its Postgres: background work only)
        print(f"{'farm / plain':<22}" + "".join(
            f"{f[c] / b[c]:>11.3f}" if f[c] is not None and b[c] is not None
            and b[c] > 0.05 * f[c] else f"{'n/a':>11}" for c in cols))


if __name__ == "__main__":
    print("run `make bench` (FARM_BENCH_SCENARIOS=cpu for this scenario alone)")
    sys.exit(subprocess.call([sys.executable, str(Path(__file__).with_name("bench.py"))],
                             env={**os.environ, "FARM_BENCH_SCENARIOS": "cpu"}))
