"""The pacing matrix of `make bench-limits` (FARM_BENCH_LIMITS_SCENARIOS=matrix): the farm
against both kinds of provider, with the limits learned from headers and configured.

Provider kinds (the simulator, 300 requests/min on claude-sonnet-5-5, 1 s fixed latency):
  * minute:  a full-minute bucket (capacity 300, refill 5/s);
  * burst10: the minute enforced over 10 s (``burst_s`` 10: capacity 50, refill 5/s);
  * burst2 (only with FARM_BENCH_RATES_PROVIDERS=minute,burst10,burst2): over 2 s, shorter
    than the farm's own 5 s bucket, so the farm must learn it (capacity 10, refill 5/s).
Farm configurations: "headers" (no FARM_LIMITS: the farm learns the limits from the
anthropic-ratelimit-* headers) and "configured" (FARM_LIMITS = {model: {"rpm": 300}}).
Each cell: fresh workers (3 processes x 100 threads, queue sonnet-complex, as the rest of
bench-limits), a fresh limiter (every ``farm:lim:*`` key of the broker deleted, so no limit
learned in one cell leaks into the next) and a reset simulator; FARM_BENCH_RATES_JOBS (450)
jobs submitted at once, short outputs (``[[sim:tokens=100]]``, no token limit), so RPM binds.
The simulator's /_sim/stats is sampled at 1 Hz until every job's call has succeeded.

Figures per cell: requests (all messages requests), 429s and their share of the requests;
steady rate = successful calls per minute from the first sample at t >= 15 s (the first
burst spent) to the last sample at which at least 5 s of the limit (25 calls) were still to
succeed (the tail, where too few jobs are left to fill the limit, does not count); total =
time until the last call succeeded. Bars (issue 13): 429 share < 0.5 % and steady >= 97 %
of the limit in every cell, and every job succeeded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections import Counter
from dataclasses import dataclass

import procs  # ops/, this script's directory
from bench_limits import (
    MODEL,
    Bar,
    Ctx,
    Sample,
    cancel_open_jobs,
    drive,
    fresh_farm_state,
    job,
    start_workers,
)

from farm.client import Farm

ENV = os.environ.get
JOBS = int(ENV("FARM_BENCH_RATES_JOBS", "450"))
LIMIT, START_S, TAIL_S = 300, 15.0, 5.0
# kind → the simulator's burst_s; FARM_BENCH_RATES_PROVIDERS picks (default minute,burst10);
# burst2 (the minute over 2 s, below the farm's own 5 s) shows the burst learned from headers
KINDS = {"minute": None, "burst10": 10.0, "burst2": 2.0}
PROVIDERS = {k: KINDS[k] for k in ENV("FARM_BENCH_RATES_PROVIDERS", "minute,burst10").split(",")}
FARMS = ("headers", "configured")
SHARE_BAR, STEADY_BAR = 0.005, 0.97
TIMEOUT_S = max(180.0, 3 * JOBS / LIMIT * 60)  # a cell that takes longer is cut (and fails)


@dataclass(frozen=True)
class Cell:
    provider: str
    farm: str
    samples: list[Sample]
    succeeded: int

    @property
    def name(self) -> str:
        return f"{self.provider} / {self.farm}"

    def steady(self) -> float:
        """Successful calls per minute in the steady window (nan if it is under 5 s)."""
        tail = LIMIT / 60 * TAIL_S
        start = next((s for s in self.samples if s.t >= START_S), None)
        end = next((s for s in reversed(self.samples) if JOBS - s.ok >= tail), None)
        if start is None or end is None or end.t - start.t < 5:
            return math.nan
        return (end.ok - start.ok) / (end.t - start.t) * 60

    def share(self) -> float:
        return self.samples[-1].limited / max(1, self.samples[-1].requests)

    def bars(self) -> list[Bar]:
        steady, share = self.steady(), self.share()
        return [(share < SHARE_BAR, f"{self.name}: 429 share {share:.2%} < {SHARE_BAR:.1%}"),
                (steady >= STEADY_BAR * LIMIT, f"{self.name}: steady {steady:.1f}/min >= "
                 f"{STEADY_BAR * LIMIT:.0f} ({STEADY_BAR:.0%} of {LIMIT})"),
                (self.succeeded == JOBS, f"{self.name}: {self.succeeded}/{JOBS} jobs succeeded")]


def run_cell(ctx: Ctx, provider: str, configured: bool) -> Cell:
    farm_kind = FARMS[configured]
    ctx.sim("/_sim/config", {"model_limits": {MODEL: {"rpm": LIMIT}},
                             "burst_s": PROVIDERS[provider]})
    env = {k: v for k, v in ctx.env.items() if k != "FARM_LIMITS"}
    env["FARM_SHUTDOWN_GRACE_S"] = "10"
    if configured:
        env["FARM_LIMITS"] = json.dumps({MODEL: {"rpm": LIMIT}})
    with Farm(ctx.settings) as farm:
        fresh_farm_state(ctx, farm)
        workers = start_workers(ctx, "farm", env, f"rates-{provider}-{farm_kind}")
        ids = list[uuid.UUID]()
        try:
            def submit(s: Sample | None) -> None:
                if s is None:
                    ids.extend(farm.submit_many(job(i) for i in range(JOBS)))

            samples = drive(ctx, f"{provider}/{farm_kind}", submit,
                            until=lambda s: s.ok >= JOBS or s.t >= TIMEOUT_S)
            with contextlib.suppress(TimeoutError):  # the statuses below tell what is left
                farm.wait(ids, timeout=30, poll_s=0.5)
            succeeded = Counter(v.status.value for v in farm.statuses(ids))["succeeded"]
        finally:
            cancel_open_jobs(farm)
            procs.stop_all(workers)
    return Cell(provider, farm_kind, samples, succeeded)


def run_matrix(ctx: Ctx) -> tuple[list[str], list[Bar]]:
    """Every provider kind x farm configuration; the table's lines and the bars."""
    print(f"matrix: {MODEL} limited to {LIMIT} requests/min, {JOBS} jobs at once per cell",
          flush=True)
    cells = [run_cell(ctx, provider, configured)
             for provider in PROVIDERS for configured in (False, True)]
    lines = [f"\npacing matrix: {LIMIT} requests/min, {JOBS} jobs at once; steady = "
             f"successful calls/min from t >= {START_S:.0f} s until fewer than "
             f"{LIMIT / 60 * TAIL_S:.0f} calls were left",
             f"{'provider / farm':<24}{'requests':>9}{'429s':>6}{'429 share':>10}"
             f"{'steady/min':>11}{'of limit':>9}{'total s':>8}{'jobs ok':>8}  bars"]
    for c in cells:
        last, steady = c.samples[-1], c.steady()
        passed = "pass" if all(ok for ok, _ in c.bars()) else "FAIL"
        lines.append(f"{c.name:<24}{last.requests:>9}{last.limited:>6}{c.share():>10.2%}"
                     f"{steady:>11.1f}{steady / LIMIT:>9.1%}{last.t:>8.0f}"
                     f"{c.succeeded:>8}  {passed}")
    return lines, [bar for c in cells for bar in c.bars()]
