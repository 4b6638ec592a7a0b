"""A scenario's farm from two or more checkouts, and plain Celery, in turn.

This machine's speed drifts by more than a change is worth, so a change is judged by runs of
the old and the new code taken in turn, not by `make bench`es an hour apart. Each round runs
the farm of every checkout given and plain Celery (from this checkout's ops/baseline.py),
one after the other, each round in another order (procs.in_turn), on the same servers,
database (one of its own, bench.staged) and simulator as `make bench`: its CPU-bound scenario
(ops/bench_cpu.py: 3000 jobs, 50 ms, C=100) or its wide one (ops/bench_wide.py: 5000 jobs,
1 s, C=1000); it prints each run, then the medians.

    git worktree add /tmp/old HEAD~1
    .venv/bin/python ops/bench_turns.py --rounds 4 /tmp/old .
    .venv/bin/python ops/bench_turns.py --scenario wide /tmp/old .

A checkout's worker runs with that checkout as its working directory and PYTHONPATH, so it
imports that checkout's `farm`; the bench's own code (submitting, measuring) is this one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import bench  # ops/, this script's directory
import bench_cpu
import bench_wide
import procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="the farm's checkouts to run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", choices=("cpu", "wide"), default="cpu")
    parser.add_argument("--no-plain", action="store_true", help="the farm's runs only")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in args.checkouts]
    for checkout in checkouts:
        if not (checkout / "farm" / "__init__.py").exists():
            raise SystemExit(f"bench turns: {checkout} is not a checkout of the farm")
    wide = args.scenario == "wide"
    if wide:  # before the embedded servers start: they inherit it
        bench_wide.open_files()
    with bench.staged() as stage:
        return turns(stage, checkouts, args.rounds, wide, args.no_plain)


def turns(stage: bench.Stage, checkouts: list[Path], rounds: int, wide: bool,
          no_plain: bool) -> int:
    settings, env, logs = stage.settings, stage.env, stage.logs
    ctx = bench_cpu.Context(settings, env, stage.broker_url, logs, bench.CONCURRENCY, 1,
                            "threads", bench.EVENTS)
    prompts = bench_cpu.prompts(settings)
    latency = bench_wide.LATENCY_S if wide else bench_cpu.LATENCY_S
    sim = procs.start_sim(stage.sim_port, ["--latency", str(latency)], env=env)
    roots = {**bench_cpu.server_pids(settings), "sim": sim.pid}
    runs: dict[str, list[tuple[float, float]]] = {}
    own_root = bench_cpu.ROOT
    try:
        for round_no in range(rounds):
            for checkout in procs.in_turn([*checkouts, *([] if no_plain else [None])],
                                          round_no):
                name = "plain Celery" if checkout is None else str(checkout)
                root = checkout or own_root  # the worker's working directory
                bench_cpu.ROOT = bench.ROOT = root
                run_env = {**env, "PYTHONPATH": str(root)}
                log = logs / "bench-turns.log"
                if wide:
                    got = (bench.run_farm(settings, run_env, "threads", log, n=bench_wide.N,
                                          concurrency=bench_wide.CONCURRENCY)
                           if checkout else
                           bench.run_baseline(ctx.broker_url, run_env, "threads", log,
                                              n=bench_wide.N,
                                              concurrency=bench_wide.CONCURRENCY))
                    rate, worker = got.completed_jobs_per_s, got.cpu_s_per_job
                else:
                    turn = bench_cpu.Context(ctx.settings, run_env, ctx.broker_url, logs,
                                             ctx.concurrency, 1, ctx.pool, ctx.events)
                    runner = bench_cpu.run_baseline if checkout is None else bench_cpu.run_farm
                    r = runner(turn, prompts, roots, log)
                    rate, cpu = r.end_to_end, r.cpu["worker"]
                    assert cpu is not None
                    worker = cpu
                runs.setdefault(name, []).append((rate, worker * 1000))
                print(f"  round {round_no + 1} {name:<40} {rate:7.1f} jobs/s end to "
                      f"end  worker {worker * 1000:.3f} ms CPU/job", flush=True)
    finally:
        bench_cpu.ROOT = bench.ROOT = own_root
        procs.stop_all([sim], grace=10)
    what = (f"wide (1 s, C={bench_wide.CONCURRENCY})" if wide
            else f"CPU-bound (50 ms, C={bench.CONCURRENCY})")
    print(f"\nmedians of {rounds} round(s), {what}:")
    for name, measured in runs.items():
        print(f"  {name:<40} {statistics.median(m[0] for m in measured):7.1f} jobs/s end to end"
              f"  worker {statistics.median(m[1] for m in measured):.3f} ms CPU/job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
