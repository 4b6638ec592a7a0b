"""`make bench-spread`: how evenly the workers of one queue share its jobs, with elastic
slots on and off (farm.pool), under a few load shapes.

Three worker processes (FARM_BENCH_SPREAD_WORKERS) of haiku-simple, -c 100 each
(FARM_BENCH_SPREAD_CONCURRENCY), started fresh for every shape, so that each starts from
its policy's first slots; the simulator answers each job after 1 s (``[[sim:latency=1]]``,
FARM_BENCH_SPREAD_LATENCY). Modes:
  * elastic: FARM_SLOTS = FARM_BENCH_SPREAD_SLOTS (default ``{}``: the issue's policy,
    10-100, 80 %/20 %, +10/-5, window 4 s, cool-downs 2 s up / 30 s down);
  * fixed: FARM_SLOTS=fixed, 100 slots each.
Shapes (FARM_BENCH_SPREAD_SHAPES, default all three):
  * backlog: 3,000 jobs at once (FARM_BENCH_SPREAD_BACKLOG), ten times what 300 slots hold;
  * trickle: 20 jobs/s for 20 s (FARM_BENCH_SPREAD_TRICKLE "RATE/SECONDS"): ~20 jobs under
    way, a fifteenth of the 300 slots;
  * bursts: 3 bursts of 300 jobs 15 s apart (FARM_BENCH_SPREAD_BURSTS "NxSIZE/GAP").
Each shape runs in both modes back to back (elastic first in odd rounds, fixed first in
even ones), so drift on a noisy machine hits both; FARM_BENCH_SPREAD_ROUNDS (2) rounds,
about 3.5 minutes each on 2 cores.

Figures per run: each worker's jobs (the run's job ids its own log shows "succeeded"), the
busiest and the idlest worker's share, the coefficient of variation of the counts
(population standard deviation ÷ mean; 0 is perfectly even), the rotation (the share of
messages taken by the worker whose previous one was longest ago, the three logs' "received"
lines merged by time; round robin 100 %, no order ~33 %), jobs/s end to end (jobs ÷ first
job recorded .. last finished, Postgres's clock), a job's mean time in its thread (Celery's
"succeeded in": the simulated latency plus what the machine adds), the 95th percentile of a
job's time from recorded to finished, each worker's peak slots (its "slots A -> B" log
lines) and the most messages it held at once (its "received" lines less its ended ones, in
log order).
Every job must succeed, each in exactly one worker's log.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs  # ops/, this script's directory
import redis

from farm import services
from farm.broker.layout import queue_keys
from farm.client import Farm, JobView, WaitTimeoutError
from farm.pool.slots import parse_slots
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.migrate import upgrade
from farm.worker.command import worker_argv

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ.get
QUEUE, TENANT = "haiku-simple", "bench-spread"
WORKERS = int(ENV("FARM_BENCH_SPREAD_WORKERS", "3"))
CONCURRENCY = int(ENV("FARM_BENCH_SPREAD_CONCURRENCY", "100"))
ROUNDS = int(ENV("FARM_BENCH_SPREAD_ROUNDS", "2"))
LATENCY_S = float(ENV("FARM_BENCH_SPREAD_LATENCY", "1"))
SLOTS = ENV("FARM_BENCH_SPREAD_SLOTS", "{}")
SHAPES = ENV("FARM_BENCH_SPREAD_SHAPES", "backlog,trickle,bursts").split(",")
BACKLOG = int(ENV("FARM_BENCH_SPREAD_BACKLOG", "3000"))
TRICKLE = ENV("FARM_BENCH_SPREAD_TRICKLE", "20/20")
BURSTS = ENV("FARM_BENCH_SPREAD_BURSTS", "3x300/15")
MODES = ("elastic", "fixed")
WAIT_S = 600.0
TICK_S = 0.1  # the trickle submits every TICK_S
TASK_LINE = re.compile(r"Task [\w.]+\[([0-9a-fA-F-]{36})\] (\S+)")  # as tests/tests_e2e.py
TOOK = re.compile(r"Task [\w.]+\[([0-9a-fA-F-]{36})\] succeeded in ([\d.]+)s")
RECEIVED = re.compile(r"^\[([\d-]+ [\d:,]+): INFO/MainProcess\] Task [\w.]+\[[0-9a-fA-F-]{36}\] "
                      r"received", re.MULTILINE)
SLOTS_LINE = re.compile(r"INFO/MainProcess\] slots (?:\d+ -> )?(\d+) \((?:bounds|utilisation)")


@dataclass(frozen=True)
class Run:
    round: int
    mode: str
    shape: str
    counts: tuple[int, ...]  # jobs each worker's log shows succeeded
    peaks: tuple[int, ...]  # each worker's highest slots
    held: tuple[int, ...]  # each worker's most messages held at once (received, not ended)
    rotation: float  # share of messages taken by the worker whose last one was longest ago
    task_s: float  # a job's mean run time in its worker (Celery's "succeeded in")
    jobs: int
    seconds: float  # first job recorded .. last finished
    p95_s: float  # a job's time from recorded to finished
    start_s: float  # the workers' start, until all were ready
    problems: tuple[str, ...] = ()

    @property
    def busiest(self) -> float:
        return max(self.counts) / max(1, sum(self.counts))

    @property
    def idlest(self) -> float:
        return min(self.counts) / max(1, sum(self.counts))

    @property
    def cv(self) -> float:
        mean = statistics.fmean(self.counts)
        return statistics.pstdev(self.counts) / mean if mean else 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def _job(shape: str, i: int) -> dict[str, Any]:
    return {"prompt": f"[[sim:latency={LATENCY_S:g}]] spread {shape} #{i}",
            "complexity": "simple", "max_tokens": 32, "tenant": TENANT}


def _pace(start: float, at: float) -> None:
    time.sleep(max(0.0, start + at - time.monotonic()))


def _trickle() -> tuple[float, float]:
    rate, seconds = TRICKLE.split("/")
    return float(rate), float(seconds)


def _bursts() -> tuple[int, int, float]:
    count, rest = BURSTS.split("x")
    size, gap = rest.split("/")
    return int(count), int(size), float(gap)


def submit(farm: Farm, shape: str) -> list[uuid.UUID]:
    """Publish the shape's jobs on its schedule; their ids."""
    ids: list[uuid.UUID] = []

    def batch(n: int) -> None:
        if n > 0:
            ids.extend(farm.submit_many(_job(shape, len(ids) + k) for k in range(n)))

    start = time.monotonic()
    if shape == "backlog":
        batch(BACKLOG)
    elif shape == "trickle":
        rate, seconds = _trickle()
        for tick in range(round(seconds / TICK_S)):  # whole jobs, the fractions carried
            batch(round(rate * TICK_S * (tick + 1)) - len(ids))
            _pace(start, TICK_S * (tick + 1))
    elif shape == "bursts":
        count, size, gap = _bursts()
        for k in range(count):
            _pace(start, k * gap)
            batch(size)
    else:
        raise SystemExit(f"bench-spread: unknown shape {shape!r} (backlog, trickle, bursts)")
    return ids


def succeeded(log: Path) -> set[str]:
    """The task (job) ids the worker's log shows "succeeded" (tests/tests_e2e.py's reading)."""
    return {m[1] for m in TASK_LINE.finditer(log.read_text(errors="replace"))
            if m[2] == "succeeded"}


def task_seconds(logs: list[Path], wanted: set[str]) -> float:
    """The mean of Celery's "succeeded in N s" over the run's jobs: a job's time in its
    thread, the simulated latency plus what the machine adds."""
    took = [float(m[2]) for log in logs for m in TOOK.finditer(log.read_text(errors="replace"))
            if m[1] in wanted]
    return statistics.fmean(took) if took else math.nan


def peak_held(log: Path) -> int:
    """The most messages the worker held at once: received (prefetched or running) and not
    yet ended, in the order its log shows them (tests/tests_e2e.py's ``in_flight``)."""
    held = peak = 0
    for m in TASK_LINE.finditer(log.read_text(errors="replace")):
        held += 1 if m[2] == "received" else -1
        peak = max(peak, held)
    return peak


def rotation(logs: list[Path]) -> float:
    """Of the messages the workers received (their "received" lines merged by time, after
    each worker's first), the share taken by the worker whose previous one was longest
    ago: 1.0 is strict round robin, about 1/len(logs) no order at all."""
    taken = sorted((stamp, w) for w, log in enumerate(logs)
                   for stamp in RECEIVED.findall(log.read_text(errors="replace")))
    last: dict[int, int] = {}
    hits = counted = 0
    for k, (_, worker) in enumerate(taken):
        if len(last) == len(logs):
            counted += 1
            hits += worker == min(last, key=last.__getitem__)
        last[worker] = k
    return hits / counted if counted else math.nan


def peak_slots(log: Path) -> int:
    """The worker's highest slots: its first ("slots N (bounds …)") or any "slots A -> B"."""
    return max((int(m[1]) for m in SLOTS_LINE.finditer(log.read_text(errors="replace"))),
               default=0)


def start_workers(env: dict[str, str], logs: list[Path], tag: str
                  ) -> list[subprocess.Popen[bytes]]:
    argvs = [worker_argv(QUEUE, concurrency=CONCURRENCY, events=False,
                         name=f"{tag}-{i}-{uuid.uuid4().hex[:6]}@%h") for i in range(len(logs))]
    return procs.start_ready(argvs, logs, env=env, cwd=ROOT, timeout=120)


def wait(farm: Farm, ids: list[uuid.UUID], workers: list[subprocess.Popen[bytes]],
         logs: list[Path]) -> list[JobView]:
    """The jobs once all have ended; SystemExit at once if a worker exits meanwhile (its
    log's last line says why: "Warm shutdown" is a SIGTERM from outside), or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return farm.wait(ids, timeout=1.0, poll_s=0.25)
        except WaitTimeoutError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-spread: {exc}") from None
        for proc, log in zip(workers, logs, strict=True):
            if proc.poll() is not None:
                last = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise SystemExit(f"bench-spread: worker {log.name} exited with status "
                                 f"{proc.returncode} mid-run ({' '.join(last)})")


def leftovers(settings: Settings, timeout: float = 60.0) -> None:
    """Until the queue is empty: the messages of jobs an interrupted run left (cancelled
    above, so the workers ignore them) must not count in this run's figures."""
    client = redis.Redis.from_url(resolve_urls(settings).broker_url)
    try:
        deadline = time.monotonic() + timeout
        while (waiting := sum(int(client.llen(k)) for k in queue_keys(QUEUE))) > 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-spread: {waiting} messages still on {QUEUE} after "
                                 f"{timeout:.0f} s (another farm's workers on this broker?)")
            time.sleep(0.2)
    finally:
        client.close()


def cancel_open_jobs(farm: Farm) -> int:
    """Cancel what an interrupted run left queued or running (their messages are ignored)."""
    with farm.db.begin() as conn:
        return conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                            "WHERE tenant = %(tenant)s AND status IN ('queued', 'running')",
                            {"tenant": TENANT}).rowcount


def run(settings: Settings, env: dict[str, str], round_no: int, mode: str, shape: str,
        logs_dir: Path) -> Run:
    env = {**env, "FARM_SLOTS": SLOTS if mode == "elastic" else "fixed"}
    logs = [logs_dir / f"bench-spread-{round_no}-{mode}-{shape}-{i}.log" for i in range(WORKERS)]
    with Farm(settings) as farm:
        if n := cancel_open_jobs(farm):
            print(f"  (cancelled {n} open {TENANT} jobs left by an earlier run)")
        t0 = time.monotonic()
        workers = start_workers(env, logs, f"spread-{mode}")
        start_s = time.monotonic() - t0
        try:
            leftovers(settings)
            ids = submit(farm, shape)
            views = wait(farm, ids, workers, logs)
        finally:
            cancel_open_jobs(farm)
            procs.stop_all(workers)
    problems: list[str] = []
    if bad := [v for v in views if v.status.value != "succeeded"]:
        problems.append(f"{len(bad)} jobs did not succeed (first: {bad[0].status.value} "
                        f"{bad[0].error})")
    wanted = {str(i) for i in ids}
    per_log = [succeeded(log) & wanted for log in logs]
    seen = [job for done in per_log for job in done]
    if (twice := len(seen) - len(set(seen))) or len(seen) != len(ids):
        problems.append(f"{len(ids)} jobs: {len(set(seen))} in the logs, {twice} in two")
    created = [v.created_at.timestamp() for v in views]
    finished = [v.finished_at.timestamp() for v in views if v.finished_at is not None]
    times = sorted(v.finished_at.timestamp() - v.created_at.timestamp()
                   for v in views if v.finished_at is not None)
    p95 = times[max(0, math.ceil(0.95 * len(times)) - 1)] if times else math.nan
    return Run(round_no, mode, shape, tuple(len(d) for d in per_log),
               tuple(peak_slots(log) for log in logs), tuple(peak_held(log) for log in logs),
               rotation(logs), task_seconds(logs, wanted), len(ids),
               max(finished) - min(created), p95, start_s, tuple(problems))


HEADER = (f"{'round':>5} {'shape':<8}{'mode':<9}{'jobs':>6}  {'per-worker jobs':<18}"
          f"{'busiest':>8}{'idlest':>8}{'CV':>7}{'rotation':>9}{'jobs/s':>8}{'task s':>7}"
          f"{'p95 s':>7}  "
          f"{'peak slots':<13}peak held")


def row(r: Run) -> str:
    return (f"{r.round:>5} {r.shape:<8}{r.mode:<9}{r.jobs:>6}  "
            f"{'/'.join(map(str, r.counts)):<18}{r.busiest:>8.1%}{r.idlest:>8.1%}{r.cv:>7.3f}"
            f"{r.rotation:>9.1%}"
            f"{r.jobs_per_s:>8.1f}{r.task_s:>7.2f}{r.p95_s:>7.1f}  "
            f"{'/'.join(map(str, r.peaks)):<13}"
            f"{'/'.join(map(str, r.held))}")


def medians(results: list[Run]) -> Iterator[str]:
    yield (f"{'shape':<8}{'mode':<9}{'runs':>5}{'busiest':>9}{'idlest':>8}{'CV':>7}"
           f"{'rotation':>9}{'jobs/s':>8}{'task s':>7}{'p95 s':>7}")
    for shape in SHAPES:
        for mode in MODES:
            rs = [r for r in results if r.shape == shape and r.mode == mode]
            if not rs:
                continue

            def med(f: Callable[[Run], float], rs: list[Run] = rs) -> float:
                return statistics.median(f(r) for r in rs)

            yield (f"{shape:<8}{mode:<9}{len(rs):>5}{med(lambda r: r.busiest):>9.1%}"
                   f"{med(lambda r: r.idlest):>8.1%}{med(lambda r: r.cv):>7.3f}"
                   f"{med(lambda r: r.rotation):>9.1%}"
                   f"{med(lambda r: r.jobs_per_s):>8.1f}{med(lambda r: r.task_s):>7.2f}"
                   f"{med(lambda r: r.p95_s):>7.1f}")


def main() -> int:
    policy = parse_slots(SLOTS)
    if policy is None:
        raise SystemExit("bench-spread: FARM_BENCH_SPREAD_SLOTS is the elastic mode's policy "
                         "(a JSON object), not 'fixed'")
    for shape in SHAPES:
        if shape not in ("backlog", "trickle", "bursts"):
            raise SystemExit(f"bench-spread: unknown shape {shape!r} (backlog, trickle, bursts)")
    _trickle(), _bursts()  # malformed values fail here, not mid-run
    base = Settings()
    if base.broker_url is None or base.database_url is None:
        services.up(base.data_dir)
    logs_dir = base.data_dir / "run"
    logs_dir.mkdir(parents=True, exist_ok=True)
    port = services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update({"ANTHROPIC_API_KEY": "sim-bench-key",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "PYTHONPATH": str(ROOT),
                "FARM_SHUTDOWN_GRACE_S": "10"})
    settings = Settings(anthropic_api_key="sim-bench-key",
                        anthropic_base_url=env["ANTHROPIC_BASE_URL"])
    upgrade(settings)
    sim = procs.start_sim(port, ["--latency", f"{LATENCY_S:g}"], env=env)
    results: list[Run] = []
    began = time.monotonic()
    try:
        rate, seconds = _trickle()
        count, size, gap = _bursts()
        print(f"bench-spread: {WORKERS} workers of {QUEUE} x -c {CONCURRENCY}, "
              f"{LATENCY_S:g} s simulated latency, {ROUNDS} round(s), on {os.cpu_count()} "
              f"cores\n  elastic: {policy.model_dump_json()}\n  fixed: {CONCURRENCY} slots "
              f"each\n  shapes: backlog {BACKLOG} jobs at once; trickle {rate:g} jobs/s for "
              f"{seconds:g} s; bursts {count} x {size} jobs {gap:g} s apart", flush=True)
        print(HEADER, flush=True)
        for round_no in range(1, ROUNDS + 1):
            for shape in SHAPES:
                # elastic first in odd rounds, fixed first in even ones
                for mode in MODES if round_no % 2 else MODES[::-1]:
                    r = run(settings, env, round_no, mode, shape, logs_dir)
                    results.append(r)
                    print(f"{row(r)}   (workers ready in {r.start_s:.0f} s)", flush=True)
                    for problem in r.problems:
                        print(f"      PROBLEM: {problem}", flush=True)
    finally:
        procs.stop_all([sim], grace=10)
    print(f"\nall runs ({time.monotonic() - began:.0f} s):\n{HEADER}")
    for r in results:
        print(row(r))
    if ROUNDS > 1:
        print("\nmedians over the rounds:", *medians(results), sep="\n")
    print("\nbusiest/idlest: a worker's share of the run's jobs (even: "
          f"{1 / WORKERS:.1%}); CV: standard deviation of the counts / their mean; rotation: "
          "share of messages taken by the worker whose previous one was longest ago (round "
          f"robin: 100 %, no order: ~{1 / WORKERS:.0%}); jobs/s: "
          "first job recorded to last finished; task s: a job's mean time in its worker's "
          "thread (Celery's \"succeeded in\"); p95 s: a job's time from recorded to "
          "finished; peak held: most messages a worker held at once (received, not ended); "
          f"logs in {logs_dir}/bench-spread-*.log")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
