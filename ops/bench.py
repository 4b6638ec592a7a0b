"""`make bench`: the farm against a plain Celery task, in one run, same simulator, same SDK,
same pool, in three scenarios (FARM_BENCH_SCENARIOS, default "latency,cpu,wide"):

  * latency: 1 s simulated latency, concurrency 100, 1500 jobs with `complexity: simple`
    given (below);
  * cpu: 50 ms simulated latency, 3000 jobs, the router classifying, limits configured:
    end-to-end jobs/s and the CPU per job of every process (worker, Postgres, Valkey,
    simulator, submitter); see ops/bench_cpu.py;
  * wide: 1 s simulated latency, concurrency 1000, 5000 jobs: what one worker process
    carries with 1000 calls in flight; see ops/bench_wide.py.

The run ends with the block "goals": each goal of issue 16 with its measured value, met or
not (a scenario not run: "not run"): the cpu scenario's end-to-end ratio farm / plain >=
0.90, the latency scenario's steady ratio >= 0.98 and its worker peak RSS ratio <= 1.20, the
wide scenario's end-to-end ratio >= 2.00.

Latency scenario: for each variant it starts one worker process, publishes N jobs and
measures: jobs/s in the steady state (from the 10% to the 90% completion time: the jobs'
finished_at in Postgres, the baseline's completion times in Redis) and end to end (first
publish to last completion, ramp-up and tail included: at 100 concurrency and 1 s latency
that alone caps 1500 jobs at 1500 / 16 s = 94 jobs/s); the worker's CPU seconds per job
(user+sys from /proc); and the worker's peak RSS (VmHWM). The farm's worker sizes its
pools from its own -c (farm.worker.runtime.size); plain Celery's completion counter gets
BASELINE_CONCURRENCY (ops/baseline.py). Variants alternate, each round in another order
(farm, baseline; baseline, farm; …: procs.in_turn) in every scenario, so drift on a noisy
machine and the place in a round hit both; the medians and the ratios farm / plain are
printed, a table per scenario.

Environment: FARM_BENCH_SCENARIOS (latency,cpu,wide), FARM_BENCH_ROUNDS (3, every scenario),
FARM_BENCH_JOBS (latency scenario, 1500; the cpu scenario's: FARM_BENCH_CPU_JOBS, 3000, and
FARM_BENCH_CPU_LATENCY, 0.05 s), FARM_BENCH_CONCURRENCY (100, both), FARM_BENCH_POOLS
(threads; e.g. "threads,gevent" to compare pools in the latency scenario; the cpu one runs
the first), FARM_BENCH_EVENTS (on, both), FARM_BENCH_METRICS (off; "on": the farm's worker
serves /metrics, FARM_METRICS_PORT; "both": each round runs the farm without and with
metrics, and the ratios with/without are printed), FARM_BENCH_BUDGETS (off; "both": each
round runs the farm without and with budgets — a global and a tenant hard budget covering
every call, far above what the run spends, and the cost breaker on — and the ratios
with/without are printed); METRICS and BUDGETS apply to the latency scenario. The wide
scenario's: FARM_BENCH_WIDE_JOBS (5000), FARM_BENCH_WIDE_CONCURRENCY (1000).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bench_cpu  # ops/, this script's directory
import bench_wide
import procs
import redis
from bench_cpu import steady_rate

from farm import services
from farm.client import Farm
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.migrate import fresh_database
from farm.worker.command import worker_argv

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("FARM_BENCH_JOBS", "1500"))
ROUNDS = int(os.environ.get("FARM_BENCH_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("FARM_BENCH_CONCURRENCY", "100"))
POOLS = os.environ.get("FARM_BENCH_POOLS", "threads").split(",")
# task events (what Flower shows) on or off, for both variants alike
EVENTS = os.environ.get("FARM_BENCH_EVENTS", "on") == "on"
METRICS = os.environ.get("FARM_BENCH_METRICS", "off")
BUDGETS = os.environ.get("FARM_BENCH_BUDGETS", "off")
if BUDGETS not in ("off", "both"):
    raise SystemExit(f"bench: FARM_BENCH_BUDGETS must be off or both, not {BUDGETS!r}")
SCENARIOS = [s.strip() for s in
             os.environ.get("FARM_BENCH_SCENARIOS", "latency,cpu,wide").split(",") if s.strip()]
if not SCENARIOS or set(SCENARIOS) - {"latency", "cpu", "wide"}:
    raise SystemExit(f"bench: FARM_BENCH_SCENARIOS lists latency, cpu and/or wide, not "
                     f"{SCENARIOS}")
if METRICS not in ("off", "on", "both"):
    raise SystemExit(f"bench: FARM_BENCH_METRICS must be off, on or both, not {METRICS!r}")
PROMPT = "What is the capital of France? Answer in one word. (bench {i})"
MAX_TOKENS = 64


@dataclass
class Result:
    variant: str
    jobs_per_s: float  # steady state: completions between 10% and 90% of the run
    end_to_end_jobs_per_s: float  # N / (first publish .. last completion), ramp included
    cpu_s_per_job: float
    peak_rss_mb: float
    # N / (first publish .. the last job's own completion time): without the submitter's poll
    # interval and final read (the wide scenario's figure, as the cpu scenario's)
    completed_jobs_per_s: float


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = procs.spawn(argv, env=env, log=log, cwd=ROOT)
    try:
        procs.wait_ready(proc, log)
    except SystemExit:
        procs.stop_all([proc])
        raise
    return proc


def _scraped_jobs(log: Path) -> float:
    """farm_jobs_finished_total as the worker's /metrics shows it (the URL from its log)."""
    import httpx2

    url = log.read_text().split("metrics on ", 1)[1].split()[0]
    body = httpx2.get(url).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("farm_jobs_finished_total{"))


def run_farm(settings: Settings, env: dict[str, str], pool: str, log: Path,
             metrics: bool = False, budgets: bool = False, *, n: int = N,
             concurrency: int = CONCURRENCY) -> Result:
    argv = worker_argv("haiku-simple", concurrency=concurrency, pool=pool, events=False,
                       name=f"bench-{uuid.uuid4().hex[:6]}@%h")
    if metrics:
        env = {**env, "FARM_METRICS_PORT": str(services.free_port())}
    if budgets:  # the breaker watches every call; it never opens at this threshold
        env = {**env, "FARM_COST_BREAKER_USD_PER_MIN": "1000000"}
        with Farm(settings) as farm:
            farm.budgets.set(usd=1_000_000, period="day")
            farm.budgets.set(tenant="bench", usd=1_000_000, period="month")
    worker = _start_worker(argv, env, log)
    try:
        cpu0 = _proc_cpu(worker.pid)
        with Farm(settings) as farm:
            jobs = [{"prompt": PROMPT.format(i=i), "max_tokens": MAX_TOKENS,
                     "complexity": "simple", "tenant": "bench"} for i in range(n)]
            start, wall = time.monotonic(), time.time()
            ids = farm.submit_many(jobs)
            submitted = time.monotonic() - start
            views = farm.wait(ids, timeout=600, poll_s=0.5)
            elapsed = time.monotonic() - start
        bad = [v for v in views if v.status.value != "succeeded"]
        if bad:
            raise SystemExit(f"bench: {len(bad)} farm jobs did not succeed: {bad[0].error}")
        cpu = _proc_cpu(worker.pid) - cpu0
        print(f"    (farm: {n} jobs validated, routed, recorded and published in {submitted:.2f}s)")
        if metrics:  # the metrics were on and counted every job (read after the CPU figure)
            wait_s = time.monotonic() + 10
            while (seen := _scraped_jobs(log)) < n and time.monotonic() < wait_s:
                time.sleep(0.2)
            if seen != n:
                raise SystemExit(f"bench: the worker's metrics counted {seen:.0f} of {n} jobs")
        if budgets:  # every call was counted in both budgets
            with Farm(settings) as farm:
                spent = {v.budget.id: v.spent_usd for v in farm.budgets.list()}
            if not spent.get("global:day") or not spent.get("tenant:bench:month"):
                raise SystemExit(f"bench: the budgets counted nothing: {spent}")
        finished = [v.finished_at.timestamp() for v in views if v.finished_at is not None]
        name = (f"farm+metrics/{pool}" if metrics else f"farm+budgets/{pool}" if budgets
                else f"farm/{pool}")
        return Result(name, steady_rate(finished), n / elapsed, cpu / n,
                      _peak_rss_mb(worker.pid), n / (max(finished) - wall))
    finally:
        procs.stop_all([worker])
        if budgets:
            with Farm(settings) as farm:
                farm.budgets.remove("global:day")
                farm.budgets.remove("tenant:bench:month")


def run_baseline(broker_url: str, env: dict[str, str], pool: str, log: Path, *, n: int = N,
                 concurrency: int = CONCURRENCY, clients: str = "default") -> Result:
    """Plain Celery; ``clients`` "grouped": calling through the farm's client layout, "loop":
    on an asyncio event loop (ops/baseline.py)."""
    from celery import Celery

    env = {**env, "BASELINE_BROKER_URL": broker_url, "BASELINE_CONCURRENCY": str(concurrency),
           "BASELINE_CLIENTS": clients}
    argv = worker_argv("baseline", concurrency=concurrency, pool=pool, app="ops.baseline",
                       events=EVENTS, name=f"baseline-{uuid.uuid4().hex[:6]}@%h")
    worker = _start_worker(argv, env, log)
    counter = redis.Redis.from_url(broker_url)
    sender = Celery("bench-sender", broker=broker_url, set_as_current=False)
    sender.conf.task_serializer = "json"
    run = uuid.uuid4().hex
    try:
        cpu0 = _proc_cpu(worker.pid)
        start, wall = time.monotonic(), time.time()
        with sender.producer_or_acquire() as producer:
            for i in range(n):
                sender.send_task("baseline.call", args=(PROMPT.format(i=i), MAX_TOKENS, run),
                                 queue="baseline", producer=producer)
        while counter.llen(f"baseline:done:{run}") < n:
            if time.monotonic() - start > 600:
                raise SystemExit("bench: baseline did not finish in 600 s")
            time.sleep(0.5)
        elapsed = time.monotonic() - start
        cpu = _proc_cpu(worker.pid) - cpu0
        finished = [float(t) for t in counter.lrange(f"baseline:done:{run}", 0, -1)]
        name = {"default": "plain-celery", "grouped": "plain-celery+clients",
                "loop": "plain-celery+loop"}[clients]
        return Result(f"{name}/{pool}", steady_rate(finished), n / elapsed, cpu / n,
                      _peak_rss_mb(worker.pid), n / (max(finished) - wall))
    finally:
        procs.stop_all([worker])
        counter.delete(f"baseline:done:{run}")
        counter.close()
        sender.close()


@dataclass(frozen=True)
class Stage:
    """What every bench run shares: the environment of the processes it starts, the
    settings of its own clients, the broker, the folder of the logs, the simulator's port."""

    env: dict[str, str]
    settings: Settings
    broker_url: str
    logs: Path
    sim_port: int


@contextmanager
def staged() -> Iterator[Stage]:
    """The embedded servers up (unless URLs are set) and a database of the bench's own on
    the farm's Postgres server, migrated, dropped afterwards (farm.store.migrate's
    ``fresh_database``): a run starts from empty tables and writes nothing into the farm's
    database."""
    base = Settings()
    if base.broker_url is None or base.database_url is None:
        services.up(base.data_dir)
    sim_port = services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update({"ANTHROPIC_API_KEY": "sim-bench-key",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}",
                "PYTHONPATH": str(ROOT), "FARM_TASK_EVENTS": "true" if EVENTS else "false",
                # the same slots as the plain Celery worker's pool: a comparison of costs
                # per job, not of the elastic ramp (make bench-spread measures that)
                "FARM_SLOTS": os.environ.get("FARM_SLOTS", "fixed"),
                # plain Celery's completion counter sized to its threads (run_baseline
                # sets its own concurrency's); the farm's worker sizes itself from its -c
                "BASELINE_CONCURRENCY": str(CONCURRENCY)})
    with fresh_database(resolve_urls(base).database_url, "farm_bench", "head") as database:
        env["FARM_DATABASE_URL"] = database
        settings = Settings(anthropic_api_key="sim-bench-key", task_events=EVENTS,
                            anthropic_base_url=env["ANTHROPIC_BASE_URL"],
                            database_url=database)
        logs = base.data_dir / "run"
        logs.mkdir(parents=True, exist_ok=True)
        yield Stage(env, settings, resolve_urls(settings).broker_url, logs, sim_port)


def main() -> int:
    if "wide" in SCENARIOS:  # before the embedded servers and workers start: they inherit it
        bench_wide.open_files()
    with staged() as stage:
        return run_all(stage)


def run_all(stage: Stage) -> int:
    """Every scenario asked for, then the goals."""
    env, settings, broker_url, logs = stage.env, stage.settings, stage.broker_url, stage.logs
    pool = POOLS[0]
    latency = rss = cpu = wide = None
    if "latency" in SCENARIOS:
        latency, rss = run_latency(settings, env, broker_url, logs)
        print()
    if "cpu" in SCENARIOS:
        results = bench_cpu.run(bench_cpu.Context(settings, env, broker_url, logs, CONCURRENCY,
                                                  ROUNDS, pool, EVENTS))
        e2e = {v: statistics.median(r.end_to_end for r in results if r.variant == v)
               for v in {r.variant for r in results}}
        cpu = e2e[f"farm/{pool}"] / e2e[f"plain-celery/{pool}"]
        print()
    if "wide" in SCENARIOS:
        def farm(env: dict[str, str], log: Path, n: int, concurrency: int) -> Result:
            return run_farm(settings, env, pool, log, n=n, concurrency=concurrency)

        def plain(env: dict[str, str], log: Path, n: int, concurrency: int) -> Result:
            return run_baseline(broker_url, env, pool, log, n=n, concurrency=concurrency)

        def ceiling(env: dict[str, str], log: Path, n: int, concurrency: int) -> Result:
            return run_baseline(broker_url, env, pool, log, n=n, concurrency=concurrency,
                                clients="grouped")

        def looped(env: dict[str, str], log: Path, n: int, concurrency: int) -> Result:
            return run_baseline(broker_url, env, pool, log, n=n, concurrency=concurrency,
                                clients="loop")

        wide = bench_wide.run(bench_wide.Context(env, logs, ROUNDS, pool, farm, plain,
                                                 ceiling, looped), broker_url)
        print()
    print_goals([
        Goal(f"cpu-bound ({1000 * bench_cpu.LATENCY_S:.0f} ms, C={CONCURRENCY}): end-to-end "
             "jobs/s farm / plain", 0.90, True, cpu),
        Goal(f"latency (1 s, C={CONCURRENCY}): steady jobs/s farm / plain", 0.98, True,
             latency),
        Goal(f"wide (1 s, C={bench_wide.CONCURRENCY}): end-to-end jobs/s farm / plain",
             bench_wide.GOAL, True, wide),
        Goal(f"latency (1 s, C={CONCURRENCY}): worker peak RSS farm / plain", 1.20, False,
             rss),
    ])
    return 0


@dataclass(frozen=True)
class Goal:
    """A goal of issue 16: a ratio farm / plain Celery and the bound it must reach."""

    what: str
    bound: float
    at_least: bool  # the ratio must be >= bound; False: <= bound
    measured: float | None  # None: its scenario did not run

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "not run"
        met = self.measured >= self.bound if self.at_least else self.measured <= self.bound
        return "met" if met else "NOT MET"


def print_goals(goals: list[Goal]) -> None:
    """The block that ends every run: each goal, its measured value, met or not."""
    print(f"goals (issue 16; pool {POOLS[0]}, medians of {ROUNDS} round(s)):")
    for g in goals:
        value = "-" if g.measured is None else f"{g.measured:.3f}"
        print(f"  {g.what:<58} {'>=' if g.at_least else '<='} {g.bound:.2f}  {value:>6}  "
              f"{g.verdict}")


def run_latency(settings: Settings, env: dict[str, str], broker_url: str, logs: Path
                ) -> tuple[float, float]:
    """The latency scenario; returns the first pool's steady ratio farm / plain and its
    worker peak RSS ratio (the largest of the rounds, as the table shows)."""
    sim_port = int(env["ANTHROPIC_BASE_URL"].rsplit(":", 1)[1])
    sim = procs.start_sim(sim_port, ["--latency", "1.0"], env=env)
    results: list[Result] = []
    try:
        print(f"bench latency: {N} jobs per run, concurrency {CONCURRENCY}, 1 s simulated latency, "
              f"{ROUNDS} round(s), pools {POOLS}, task events {'on' if EVENTS else 'off'}, "
              f"metrics {METRICS}, budgets {BUDGETS}, on {os.cpu_count()} cores")
        variants = {"off": ("farm",), "on": ("farm+metrics",),
                    "both": ("farm", "farm+metrics")}[METRICS]
        if BUDGETS == "both":
            variants = (*variants, "farm+budgets")
        for round_no in range(ROUNDS):
            for pool in POOLS:
                for variant in procs.in_turn((*variants, "baseline"), round_no):
                    log = logs / f"bench-{variant}-{pool}.log"
                    if variant.startswith("farm"):
                        r = run_farm(settings, env, pool, log,
                                     metrics=variant.startswith("farm+metrics"),
                                     budgets=variant == "farm+budgets")
                    else:
                        r = run_baseline(broker_url, env, pool, log)
                    results.append(r)
                    print(f"  round {round_no + 1} {r.variant:<22} {r.jobs_per_s:7.1f} jobs/s "
                          f"(end to end {r.end_to_end_jobs_per_s:5.1f})  "
                          f"{1000 * r.cpu_s_per_job:6.2f} ms CPU/job  {r.peak_rss_mb:6.1f} MB")
    finally:
        procs.stop_all([sim], grace=10)
    print("\nlatency scenario, medians:")
    print(f"{'variant':<24}{'jobs/s':>9}{'end-to-end':>12}{'CPU ms/job':>12}"
          f"{'peak RSS MB':>13}")
    medians: dict[str, float] = {}
    cpu: dict[str, float] = {}
    e2e: dict[str, float] = {}
    for variant in dict.fromkeys(r.variant for r in results):
        rs = [r for r in results if r.variant == variant]
        medians[variant] = statistics.median(r.jobs_per_s for r in rs)
        cpu[variant] = statistics.median(r.cpu_s_per_job for r in rs)
        e2e[variant] = statistics.median(r.end_to_end_jobs_per_s for r in rs)
        print(f"{variant:<24}{medians[variant]:>9.1f}{e2e[variant]:>12.1f}"
              f"{1000 * cpu[variant]:>12.2f}{max(r.peak_rss_mb for r in rs):>13.1f}")
    farm = "farm+metrics" if METRICS == "on" else "farm"
    rss = {v: max(r.peak_rss_mb for r in results if r.variant == v) for v in medians}
    for pool in POOLS:
        f, b = f"{farm}/{pool}", f"plain-celery/{pool}"
        print(f"{f + ' / plain':<24}{medians[f] / medians[b]:>9.3f}{e2e[f] / e2e[b]:>12.3f}"
              f"{cpu[f] / cpu[b]:>12.3f}")
        print(f"throughput ratio {farm}/plain-celery ({pool}): {medians[f] / medians[b]:.3f}")
        if METRICS == "both":
            on, off = f"farm+metrics/{pool}", f"farm/{pool}"
            print(f"metrics on/off ({pool}): throughput ratio {medians[on] / medians[off]:.3f}, "
                  f"CPU per job {1000 * (cpu[on] - cpu[off]):+.3f} ms "
                  f"({100 * (cpu[on] / cpu[off] - 1):+.1f} %)")
        if BUDGETS == "both":
            on, off = f"farm+budgets/{pool}", f"farm/{pool}"
            print(f"budgets on/off ({pool}): throughput ratio {medians[on] / medians[off]:.3f}, "
                  f"CPU per job {1000 * (cpu[on] - cpu[off]):+.3f} ms "
                  f"({100 * (cpu[on] / cpu[off] - 1):+.1f} %)")
    f, b = f"{farm}/{POOLS[0]}", f"plain-celery/{POOLS[0]}"
    return medians[f] / medians[b], rss[f] / rss[b]


if __name__ == "__main__":
    sys.exit(main())
