"""`make bench-cost`: what the farm's cost features save on one realistic workload, and the
latency they add.

One mixed workload of FARM_BENCH_COST_JOBS (1,000) jobs (ops/bench_cost_workload.py, seeded
by FARM_BENCH_COST_SEED: exact repeats, questions after long shared contexts, jobs that can
wait, simple and complex prompts) runs twice, through the same simulator:
  * farm: all features on: the router picks the model (complexity auto), memo=True
    (identical jobs call once), the prompt cache on the shared contexts (FARM_PROMPT_CACHE=5m),
    the jobs that can wait in Message Batches (x0.5);
  * baseline: the same jobs, everything synchronous on the complex model (complexity
    complex, memo off, cache off, no batch).
Each path gets a fresh database (created on the server, dropped afterwards), a flushed
broker database (FARM_BENCH_COST_BROKER_URL, default DB 3 of the farm's Valkey), a reset
simulator (its counters, prompt cache and batches) and fresh workers: one process per
queue (-c FARM_BENCH_COST_CONCURRENCY, 32, fixed slots). The jobs arrive in the workload's
order at FARM_BENCH_COST_RATE (25) jobs/s, the same schedule on both paths.

Figures per path: the cost as the farm recorded it (the sum of jobs.cost_usd) and as the
simulator billed it (/_sim/stats billed_usd, its batch part billed_batch_usd): the two
must agree; calls per model, memo hits (and how many of the workload's repeats were one), batched
jobs, prompt-cache tokens; the latency
each job saw (finished_at - created_at, Postgres's clock) as p50/p95, for synchronous
jobs, batched jobs and memo hits apart. Then the cost ratio farm/baseline (goal <=
FARM_BENCH_COST_GOAL, 0.30).

The simulator answers after 0.1 s + output tokens at 1,000 tokens/s, ends a Message Batch
FARM_BENCH_COST_BATCH_S (5) s after it is created, and the farm sends a model's batch once
its oldest job has waited FARM_BENCH_COST_FLUSH_S (5) s and polls it every second: the
batched jobs' latency here is set by those settings (real batches take minutes, up to 24
hours).

Exit 1 if a job did not succeed, the recorded and billed costs disagree, or the ratio
misses the goal. Worker logs: FARM_DATA_DIR/run/bench-cost-*.log. FARM_BENCH_COST_JSON=FILE
also writes the figures there as JSON (money as strings).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import bench_cost_workload as workload  # ops/, this script's directory
import procs
import redis
from sqlalchemy import text

from farm import services
from farm.client import Farm, WaitTimeoutError
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.migrate import fresh_database, upgrade
from farm.worker.command import worker_argv

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ.get
N = int(ENV("FARM_BENCH_COST_JOBS", "1000"))
SEED = int(ENV("FARM_BENCH_COST_SEED", "15"))
RATE = float(ENV("FARM_BENCH_COST_RATE", "25"))
GOAL = Decimal(ENV("FARM_BENCH_COST_GOAL", "0.30"))
CONCURRENCY = int(ENV("FARM_BENCH_COST_CONCURRENCY", "32"))
BATCH_S = float(ENV("FARM_BENCH_COST_BATCH_S", "5"))
FLUSH_S = float(ENV("FARM_BENCH_COST_FLUSH_S", "5"))
TTFT_S, TOKENS_PER_S = 0.1, 1000.0
PATHS = ("farm", "baseline")
QUEUES = ("haiku-simple", "sonnet-complex")
BROKER_DB = 3
WAIT_S = 600.0
TICK_S = 0.1
TOLERANCE = Decimal("0.000001")  # recorded vs billed: both exact to 10 places


@dataclass(frozen=True)
class Figures:
    """What one path measured."""

    name: str
    jobs: int
    ok: int
    recorded_usd: Decimal  # sum of jobs.cost_usd
    billed_usd: Decimal | None  # the simulator's, None if it does not say
    billed_batch_usd: Decimal | None
    calls: dict[str, int]  # synchronous calls per model (the simulator's count)
    batch_requests: int  # requests the simulator took in Message Batches
    routed: dict[str, int]  # jobs per queue
    memo_hits: int
    repeats: int  # jobs of the workload that repeat an earlier one
    repeats_hit: int  # of them, answered from the memo
    saved_usd: Decimal  # what the memo hits' originals cost (jobs.saved_usd)
    batched: int
    cache_read: int
    cache_write: int
    latency: dict[str, list[float]]  # group -> finished_at - created_at, seconds
    wall_s: float
    problems: list[str] = field(default_factory=list)


def sim_call(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The simulator's control routes: GET without a body, POST with one."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def bench_broker_url(farm_broker: str) -> str:
    """FARM_BENCH_COST_BROKER_URL, else database BROKER_DB of the farm's broker."""
    return ENV("FARM_BENCH_COST_BROKER_URL") or urllib.parse.urlsplit(farm_broker)._replace(
        path=f"/{BROKER_DB}").geturl()


def flush(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    try:
        client.flushdb()
    finally:
        client.close()


def start_workers(env: dict[str, str], logs_dir: Path, tag: str
                  ) -> list[subprocess.Popen[bytes]]:
    logs = [logs_dir / f"bench-cost-{tag}-{queue}.log" for queue in QUEUES]
    argvs = [worker_argv(queue, concurrency=CONCURRENCY, events=False,
                         name=f"cost-{tag}-{queue}-{uuid.uuid4().hex[:6]}@%h")
             for queue in QUEUES]
    return procs.start_ready(argvs, logs, env=env, cwd=ROOT, timeout=120)


def submit(farm: Farm, jobs: list[dict[str, Any]]) -> list[uuid.UUID]:
    """The jobs in order, RATE a second (every TICK_S, the ones due by then)."""
    ids: list[uuid.UUID] = []
    start = time.monotonic()
    while len(ids) < len(jobs):
        due = min(len(jobs), math.floor(RATE * (time.monotonic() - start)) + 1)
        if due > len(ids):
            ids.extend(farm.submit_many(jobs[len(ids):due]))
        time.sleep(max(0.0, TICK_S - (time.monotonic() - start) % TICK_S))
    return ids


def wait(farm: Farm, ids: list[uuid.UUID], workers: list[subprocess.Popen[bytes]]) -> None:
    """Until every job has ended; SystemExit if a worker exits meanwhile or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            farm.wait(ids, timeout=2.0, poll_s=0.25)
            return
        except WaitTimeoutError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-cost: {exc}") from None
        for proc in workers:
            if proc.poll() is not None:
                raise SystemExit(f"bench-cost: a worker exited with status {proc.returncode} "
                                 "mid-run (its log: FARM_DATA_DIR/run/bench-cost-*.log)")


def read_jobs(farm: Farm, ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """The path's jobs as recorded: cost, tokens, times, and how each was served."""
    query = text(
        "SELECT id, status, queue, cost_usd, cache_read_input_tokens AS cache_read, "
        "cache_creation_input_tokens AS cache_write, cache_hit, saved_usd, batched AS batch, "
        "EXTRACT(EPOCH FROM finished_at - created_at) AS seconds "
        "FROM jobs WHERE id = ANY(:ids)")
    with farm.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query, {"ids": ids})]


def measure(name: str, rows: list[dict[str, Any]], repeats: set[uuid.UUID],
            stats: dict[str, Any], wall_s: float) -> Figures:
    latency: dict[str, list[float]] = {"sync": [], "batch": [], "memo hit": []}
    for r in rows:
        if r["status"] == "succeeded" and r["seconds"] is not None:
            group = "memo hit" if r["cache_hit"] else "batch" if r["batch"] else "sync"
            latency[group].append(float(r["seconds"]))
    routed: dict[str, int] = {}
    for r in rows:
        routed[r["queue"]] = routed.get(r["queue"], 0) + 1
    billed, billed_batch = stats.get("billed_usd"), stats.get("billed_batch_usd")
    out = Figures(
        name=name, jobs=len(rows), ok=sum(r["status"] == "succeeded" for r in rows),
        recorded_usd=sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0)),
        billed_usd=None if billed is None else Decimal(billed),
        billed_batch_usd=None if billed_batch is None else Decimal(billed_batch),
        calls=dict(stats.get("successful_by_model", {})),
        batch_requests=int(stats.get("batches", {}).get("requests", 0)), routed=routed,
        memo_hits=sum(bool(r["cache_hit"]) for r in rows), repeats=len(repeats),
        repeats_hit=sum(bool(r["cache_hit"]) for r in rows if r["id"] in repeats),
        saved_usd=sum((r["saved_usd"] or Decimal(0) for r in rows), Decimal(0)),
        batched=sum(bool(r["batch"]) for r in rows),
        cache_read=sum(r["cache_read"] for r in rows),
        cache_write=sum(r["cache_write"] for r in rows), latency=latency, wall_s=wall_s)
    if out.ok != out.jobs:
        bad = next(r for r in rows if r["status"] != "succeeded")
        out.problems.append(f"{out.jobs - out.ok} of {out.jobs} jobs did not succeed "
                            f"(first: {bad['id']} {bad['status']})")
    if out.billed_usd is None:
        out.problems.append("the simulator's /_sim/stats has no billed_usd: nothing to "
                            "check the recorded cost against")
    elif abs(out.billed_usd - out.recorded_usd) > TOLERANCE:
        out.problems.append(f"recorded ${out.recorded_usd} but the simulator billed "
                            f"${out.billed_usd}")
    return out


def run_path(name: str, generated: list[workload.Job], server_db: str, broker_url: str,
             env: dict[str, str], sim_url: str, logs_dir: Path) -> Figures:
    make = workload.farm_job if name == "farm" else workload.baseline_job
    jobs = [make(job) for job in generated]
    with fresh_database(server_db, f"farm_bench_cost_{name}") as database_url:
        settings = Settings(broker_url=broker_url, database_url=database_url,
                            anthropic_api_key="sim-bench-key", anthropic_base_url=sim_url,
                            task_events=False)
        upgrade(settings)
        flush(broker_url)
        sim_call(sim_url, "/_sim/reset", {})
        workers = start_workers({**env, "FARM_BROKER_URL": broker_url,
                                 "FARM_DATABASE_URL": database_url}, logs_dir, name)
        try:
            with Farm(settings) as farm:
                began = time.monotonic()
                ids = submit(farm, jobs)
                wait(farm, ids, workers)
                wall_s = time.monotonic() - began
                rows = read_jobs(farm, ids)
            stats = sim_call(sim_url, "/_sim/stats")
        finally:
            procs.stop_all(workers)
            flush(broker_url)
    repeats = {i for i, job in zip(ids, generated, strict=True) if job.repeat_of is not None}
    return measure(name, rows, repeats, stats, wall_s)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; NaN for no values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def usd(value: Decimal | None) -> str:
    return "n/a" if value is None else f"${value:,.4f}"


def report(results: dict[str, Figures]) -> list[str]:
    lines = [f"{'path':<9}{'jobs ok':>9}  {'recorded (jobs.cost_usd)':>25}{'billed (sim)':>14}"
             f"{'of it batch':>13}  calls per model (sync / in batches)"]
    for r in results.values():
        calls = ", ".join(f"{m} {n}" for m, n in sorted(r.calls.items()))
        lines.append(f"{r.name:<9}{r.ok:>4}/{r.jobs:<4}  {usd(r.recorded_usd):>25}"
                     f"{usd(r.billed_usd):>14}{usd(r.billed_batch_usd):>13}  "
                     f"{calls or 'none'} / {r.batch_requests}")
    for r in results.values():
        routed = ", ".join(f"{q} {n}" for q, n in sorted(r.routed.items()))
        lines.append(f"  {r.name}: routed {routed}; memo hits {r.memo_hits} (of the "
                     f"{r.repeats} repeats {r.repeats_hit}; saved {usd(r.saved_usd)}); "
                     f"batched {r.batched}; prompt cache read "
                     f"{r.cache_read:,} / written {r.cache_write:,} tokens; {r.wall_s:.0f} s")
    lines.append("\nlatency added, finished_at - created_at (s):")
    lines.append(f"  {'path':<9}{'jobs':<10}{'n':>6}{'p50':>8}{'p95':>8}")
    for r in results.values():
        for group, values in r.latency.items():
            if values:
                lines.append(f"  {r.name:<9}{group:<10}{len(values):>6}"
                             f"{percentile(values, 0.5):>8.2f}{percentile(values, 0.95):>8.2f}")
    return lines


def main() -> int:
    if N < 1 or RATE <= 0 or CONCURRENCY < 1:
        raise SystemExit("bench-cost: FARM_BENCH_COST_JOBS, _RATE and _CONCURRENCY must be "
                         "positive")
    base = Settings()
    if base.broker_url is None or base.database_url is None:
        services.up(base.data_dir)
    urls = resolve_urls(base)
    broker_url = bench_broker_url(urls.broker_url)
    logs_dir = base.data_dir / "run"
    logs_dir.mkdir(parents=True, exist_ok=True)
    port = services.free_port()
    sim_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FARM_"))}
    env.update({"ANTHROPIC_API_KEY": "sim-bench-key", "ANTHROPIC_BASE_URL": sim_url,
                "PYTHONPATH": str(ROOT), "FARM_DATA_DIR": str(base.data_dir),
                "FARM_SLOTS": "fixed", "FARM_TASK_EVENTS": "false",
                "FARM_SHUTDOWN_GRACE_S": "10", "FARM_PROMPT_CACHE": "5m",
                # a model's batch leaves once its oldest job has waited FLUSH_S; the batch
                # loop looks every 0.5 s and polls a batch in flight every second
                "FARM_BATCH_MAX_AGE_S": f"{FLUSH_S:g}", "FARM_BATCH_TICK_S": "0.5",
                "FARM_BATCH_POLL_S": "1", "FARM_BATCH_POLL_MAX_S": "1"})
    jobs = workload.generate(N, SEED)
    sim = procs.start_sim(port, ["--ttft", f"{TTFT_S:g}", "--tokens-per-s", f"{TOKENS_PER_S:g}"],
                          env=env, log=logs_dir / "bench-cost-sim.log")
    results: dict[str, Figures] = {}
    try:
        sim_call(sim_url, "/_sim/config", {"batch_processing_s": BATCH_S})
        print(f"bench-cost: seed {SEED}, {RATE:g} jobs/s arriving, workers -c {CONCURRENCY} "
              f"per queue, on {os.cpu_count()} cores\n  mix: {workload.describe(jobs)}\n"
              f"  simulator: {TTFT_S:g} s + output at {TOKENS_PER_S:,.0f} tokens/s; a Message "
              f"Batch ends {BATCH_S:g} s after it is created; the farm sends a batch once its "
              f"oldest job has waited {FLUSH_S:g} s and polls it every 1 s", flush=True)
        for name in PATHS:
            results[name] = run_path(name, jobs, urls.database_url,
                                     broker_url, env, sim_url, logs_dir)
            print(f"  {name}: done in {results[name].wall_s:.0f} s", flush=True)
    finally:
        procs.stop_all([sim], grace=10)
    print("", *report(results), sep="\n")
    farm, baseline = results["farm"], results["baseline"]
    ratio = farm.recorded_usd / baseline.recorded_usd if baseline.recorded_usd else Decimal(
        "NaN")
    met = ratio <= GOAL
    print(f"\ncost ratio farm/baseline: {ratio:.3f} (goal <= {GOAL}: "
          f"{'met' if met else 'MISSED'})")
    print(f"note: batched jobs wait for their batch: here up to {FLUSH_S:g} s to fill (the "
          f"bench's flush age) + {BATCH_S:g} s of processing (the simulator's setting) + up to "
          "1 s to the next poll; real Message Batches take minutes, up to 24 hours. Worker "
          "logs: "
          f"{logs_dir}/bench-cost-*.log")
    problems = [f"{r.name}: {p}" for r in results.values() for p in r.problems]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if out := ENV("FARM_BENCH_COST_JSON"):  # the figures for a program (tests/e2e)
        Path(out).write_text(json.dumps({
            "paths": {name: asdict(r) for name, r in results.items()}, "ratio": ratio,
            "goal": GOAL, "problems": problems}, default=str, indent=1))
    return 0 if met and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
