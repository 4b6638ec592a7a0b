"""`make bench-limits`: the farm's limiter against both kinds of provider ("matrix", ~8 min),
against plain Celery's `rate_limit` ("rates", ~7 min), through an overload storm ("storm",
~2 min). FARM_BENCH_LIMITS_SCENARIOS picks them (or "all"); default "matrix,storm".

Rates and storm: the simulator (own process, 1 s fixed latency) limits claude-sonnet-5-5 to 600
RPM and 100,000 OTPM. Jobs ask max_tokens 256 and get 100 tokens (``[[sim:tokens=100]]``; the
excess reserved is refunded at the end), so RPM binds, not OTPM. Each rate variant runs 3 worker
processes x 100 threads (FARM_BENCH_LIMITS_PROCESSES, _CONCURRENCY) for FARM_BENCH_LIMITS_S
(120) s, topped up every second to FARM_BENCH_LIMITS_BACKLOG (600) jobs not yet done; the
simulator is reset first and its /_sim/stats sampled at 1 Hz.
  * farm: `celery -A farm worker -Q sonnet-complex` with FARM_LIMITS = those two limits.
  * plain Celery (ops/baseline_limited.py), per FARM_BENCH_LIMITS_BASELINES entry: the
    task's `rate_limit` the obvious way, "600/m" (Celery applies it per worker process),
    split by hand over the 3 processes, "200/m" ("none", no limit, may be added). SDK
    default client (2 retries). Found: with ~100 tasks waiting per process Celery 5.7
    releases ~1/s whatever the rate (a timer entry per waiting task; kombu's hub fires
    <= 10 per loop turn, then polls up to 1 s).
Figures: whole-run RPM (successful calls / run time, the initial burst included: the
farm's buckets hold a few seconds); steady RPM (successful calls/min from min(60 s, half the
run) to the end, the burst long spent: held against the 95 % bar); 429 share (429s / all
messages requests of the whole run; bar < 1 %). Open farm jobs are cancelled at the end;
none may have failed.

Storm (farm, fresh workers, same limits): complex jobs at FARM_BENCH_STORM_RATE (4)/s, 3 of 4
with allow_fallback=True; after 5 s claude-sonnet-5-5 answers 529 for FARM_BENCH_STORM_S
(30) s; the stream goes on 10 s after it. Bars: >= 80 % of the fallback jobs submitted up
to 5 s before the storm's end done on claude-haiku-4-5 (jobs.served_model) by its end; every
job succeeded (none lost; non-fallback ones on claude-sonnet-5-5); the breaker (sampled at
1 Hz) closed again after the storm. Printed too: attempts by model and outcome, 529 counts.

Exit 1 if a farm bar fails (plain Celery's figures are for comparison). Services: those of
FARM_DATA_DIR, as `make bench`; the baseline's broker is DB 2 of that Valkey (flushed before
and after). Worker logs: FARM_DATA_DIR/run/bench-limits-*.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import baseline_limited as baseline  # ops/, this script's directory
import procs
import redis
from sqlalchemy import text

from farm import services
from farm.capacity.breaker import Breaker, BreakerConfig
from farm.client import Farm, JobView
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.migrate import upgrade
from farm.worker.command import worker_argv

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ.get
DURATION_S = float(ENV("FARM_BENCH_LIMITS_S", "120"))
PROCESSES = int(ENV("FARM_BENCH_LIMITS_PROCESSES", "3"))
CONCURRENCY = int(ENV("FARM_BENCH_LIMITS_CONCURRENCY", "100"))
BACKLOG = int(ENV("FARM_BENCH_LIMITS_BACKLOG", "600"))
SCENARIOS = ENV("FARM_BENCH_LIMITS_SCENARIOS", "matrix,storm")
BASELINES = [x for x in ENV("FARM_BENCH_LIMITS_BASELINES", "600/m,200/m").split(",") if x]
STORM_S, STORM_RATE = float(ENV("FARM_BENCH_STORM_S", "30")), int(ENV("FARM_BENCH_STORM_RATE", "4"))
PRE_STORM_S, POST_STORM_S, BREAKER_WAIT_S, JOBS_WAIT_S = 5.0, 10.0, 150.0, 240.0
MODEL, FALLBACK, QUEUE = "claude-sonnet-5-5", "claude-haiku-4-5", "sonnet-complex"
RPM, OTPM, MAX_TOKENS, TENANT = 600, 100_000, 256, "bench-limits"
PROMPT = "Summarise benchmark item {i} briefly. [[sim:tokens=100]]"
RPM_BAR, LIMITED_BAR, STORM_DONE_BAR, BASELINE_DB = 0.95, 0.01, 0.80, 2
Bar = tuple[bool, str]
INF = float("inf")


@dataclass(frozen=True)
class Ctx:
    settings: Settings
    env: dict[str, str]
    sim_url: str
    broker: redis.Redis
    baseline_url: str

    @property
    def farm_env(self) -> dict[str, str]:
        return {**self.env, "FARM_LIMITS": json.dumps({MODEL: {"rpm": RPM, "otpm": OTPM}}),
                "FARM_SHUTDOWN_GRACE_S": "10"}

    def sim(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The simulator's control routes (/_sim/…): GET without a body, POST with one."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.sim_url + path, data)  # the sim reads any body as JSON
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the phase's first job
    ok: int  # successful calls of MODEL
    requests: int  # all messages requests
    limited: int  # 429s


@dataclass(frozen=True)
class RateResult:
    name: str
    samples: list[Sample]
    jobs: str  # what happened to the jobs, one line
    failed: int = 0  # farm jobs failed, dead or lost

    def window(self) -> tuple[Sample, Sample]:
        """The steady window: from min(60 s, half the run) to the end."""
        return next(s for s in self.samples if s.t >= min(60.0, DURATION_S / 2)), self.samples[-1]

    def rpm(self) -> tuple[float, float]:
        """(whole-run, steady) successful calls per minute."""
        (a, b), last = self.window(), self.samples[-1]
        return last.ok / last.t * 60, (b.ok - a.ok) / (b.t - a.t) * 60

    def share_429(self) -> float:
        return self.samples[-1].limited / max(1, self.samples[-1].requests)


def rate_bars(r: RateResult) -> list[Bar]:
    steady, share = r.rpm()[1], r.share_429()
    return [(steady >= RPM_BAR * RPM,
             f"{r.name}: steady {steady:.1f} RPM >= {RPM_BAR * RPM:.0f} ({RPM_BAR:.0%} of {RPM})"),
            (share < LIMITED_BAR, f"{r.name}: 429 share {share:.2%} < {LIMITED_BAR:.0%}")]


def start_workers(ctx: Ctx, app: str, env: dict[str, str], tag: str, queue: str = QUEUE
                  ) -> list[subprocess.Popen[bytes]]:
    logs = [ctx.settings.data_dir / "run" / f"bench-limits-{tag}-{i}.log"
            for i in range(PROCESSES)]
    argvs = [worker_argv(queue, concurrency=CONCURRENCY, app=app, events=False,
                         name=f"{tag}-{i}-{uuid.uuid4().hex[:6]}@%h") for i in range(PROCESSES)]
    return procs.start_ready(argvs, logs, env=env, cwd=ROOT, timeout=90)


def fresh_farm_state(ctx: Ctx, farm: Farm) -> None:
    """Start like the simulator does: a fresh limiter (full buckets, no limits learned),
    closed breakers, no leftovers."""
    for model in (MODEL, FALLBACK):
        Breaker(ctx.broker, BreakerConfig()).reset(model)
    for key in ctx.broker.scan_iter(match="farm:lim:*", count=1000):
        ctx.broker.delete(key)
    if n := cancel_open_jobs(farm):
        print(f"  (cancelled {n} open {TENANT} jobs left by an earlier run)")


def cancel_open_jobs(farm: Farm) -> int:
    with farm.db.begin() as conn:
        return conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                            "WHERE tenant = %(tenant)s AND status IN ('queued', 'running')",
                            {"tenant": TENANT}).rowcount


def drive(ctx: Ctx, name: str, top_up: Callable[[Sample | None], None],
          until: Callable[[Sample], bool] = lambda s: s.t >= DURATION_S) -> list[Sample]:
    """Reset the simulator, then top up and sample once a second until ``until`` (a sample)."""
    ctx.sim("/_sim/reset", {})
    t0, samples = time.monotonic(), list[Sample]()
    top_up(None)
    while not samples or not until(samples[-1]):
        time.sleep(max(0.0, t0 + len(samples) + 1 - time.monotonic()))
        s = ctx.sim("/_sim/stats")
        samples.append(last := Sample(time.monotonic() - t0, s["successful_by_model"].get(
            MODEL, 0), s["messages_requests"], s["by_status"].get("429", 0)))
        if len(samples) % 20 == 0:
            print(f"    {name} t={last.t:5.1f}s ok={last.ok} requests={last.requests} "
                  f"429={last.limited}", flush=True)
        if not until(last):
            top_up(last)
    return samples


def job(i: int, **extra: Any) -> dict[str, Any]:
    return {"prompt": PROMPT.format(i=i), "max_tokens": MAX_TOKENS, "complexity": "complex",
            "tenant": TENANT, **extra}


def run_farm(ctx: Ctx) -> RateResult:
    with Farm(ctx.settings) as farm:
        fresh_farm_state(ctx, farm)
        workers, ids = start_workers(ctx, "farm", ctx.farm_env, "farm"), list[uuid.UUID]()
        try:
            def top_up(s: Sample | None) -> None:
                missing = BACKLOG - (len(ids) - (s.ok if s else 0))
                if missing >= 50:
                    ids.extend(farm.submit_many(job(len(ids) + k) for k in range(missing)))

            samples = drive(ctx, "farm", top_up)
        finally:
            cancelled = cancel_open_jobs(farm)
            procs.stop_all(workers)
        statuses = Counter(v.status.value for v in farm.statuses(ids))
    bad = len(ids) - statuses["succeeded"] - statuses["cancelled"]
    return RateResult("farm (FARM_LIMITS)", samples, f"{len(ids)} submitted, "
                      f"{statuses['succeeded']} succeeded, {cancelled} open at the end "
                      f"(cancelled), {bad} failed/dead/lost", bad)


def run_plain(ctx: Ctx, limit: str) -> RateResult:
    (queue := redis.Redis.from_url(ctx.baseline_url)).flushdb()
    env = {**ctx.env, "BASELINE_BROKER_URL": ctx.baseline_url, "BASELINE_RATE_LIMIT": limit,
           "BASELINE_MODEL": MODEL}
    run, sent = uuid.uuid4().hex, 0
    workers = start_workers(ctx, "ops.baseline_limited", env, f"plain-{limit.replace('/', '-')}",
                            baseline.QUEUE)
    try:
        def top_up(_: Sample | None) -> None:
            nonlocal sent
            if (missing := BACKLOG - int(queue.llen(baseline.QUEUE))) >= 50:
                sent += baseline.publish(ctx.baseline_url, run, (
                    PROMPT.format(i=i) for i in range(sent, sent + missing)), MAX_TOKENS)

        samples = drive(ctx, f"plain {limit}", top_up)
        counts = baseline.counts(ctx.baseline_url, run)
    finally:
        procs.stop_all(workers)
        queue.flushdb()
        queue.close()
    failed = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "ok") or "0 failed"
    return RateResult(f"plain Celery rate_limit={limit}", samples, f"{sent} sent, "
                      f"{counts.get('ok', 0)} succeeded, {failed} (after the SDK's retries)")


def run_storm(ctx: Ctx) -> tuple[list[str], list[Bar]]:
    breaker = Breaker(ctx.broker, BreakerConfig())
    ctx.sim("/_sim/reset", {})
    ctx.sim("/_sim/config", {"overload_models": {}})
    with Farm(ctx.settings) as farm:
        fresh_farm_state(ctx, farm)
        workers = start_workers(ctx, "farm", ctx.farm_env, "storm")
        ids, timeline = dict[uuid.UUID, bool](), list[tuple[float, str]]()  # (t, breaker)
        start = end = closed_at = INF
        try:
            t0 = time.time()
            while True:
                now = time.time()
                if start == INF and now - t0 >= PRE_STORM_S:
                    start, end = now, now + STORM_S
                    ctx.sim("/_sim/config", {"overload_models": {MODEL: end}})
                    print(f"    storm: {MODEL} answers 529 for {STORM_S:.0f} s", flush=True)
                if now < end + POST_STORM_S:
                    flags = [(len(ids) + k) % 4 != 0 for k in range(STORM_RATE)]
                    new = farm.submit_many(job(len(ids) + k, allow_fallback=f)
                                           for k, f in enumerate(flags))
                    ids.update(zip(new, flags, strict=True))
                timeline.append((now, str(breaker.state(MODEL)["state"])))
                if now >= end and timeline[-1][1] == "closed" and any(
                        t >= start and state == "open" for t, state in timeline):
                    closed_at = min(closed_at, now)
                if now >= end + POST_STORM_S and (closed_at < now or now > end + BREAKER_WAIT_S):
                    break
                time.sleep(max(0.0, t0 + len(timeline) - time.time()))
            with contextlib.suppress(TimeoutError):  # the statuses below tell what is left
                farm.wait(list(ids), timeout=JOBS_WAIT_S, poll_s=1.0)
            views = {v.id: v for v in farm.statuses(list(ids))}
            with farm.engine.connect() as conn:
                tried = conn.execute(text(
                    "SELECT model, outcome, count(*) FROM attempts WHERE job_id = ANY(:ids) "
                    "GROUP BY 1, 2 ORDER BY 1, 2"), {"ids": list(ids)}).all()
            stats = ctx.sim("/_sim/stats")
        finally:
            cancel_open_jobs(farm)
            procs.stop_all(workers)
            ctx.sim("/_sim/config", {"overload_models": {}})
    opened = next((t - start for t, state in timeline if t >= start and state == "open"), None)

    def fin(v: JobView) -> float:  # finish time; inf unless it succeeded
        return v.finished_at.timestamp() if v.finished_at and v.status == "succeeded" else INF

    fb = [views[i] for i, f in ids.items() if f and i in views]
    other = [views[i] for i, f in ids.items() if not f and i in views]
    eligible = [v for v in fb if start <= v.created_at.timestamp() <= end - 5]
    on_time = sum(1 for v in eligible if fin(v) <= end and v.served_model == FALLBACK)
    share = on_time / len(eligible) if eligible else 0.0
    statuses = Counter(v.status.value for v in views.values())
    other_ok = Counter(v.served_model for v in other if fin(v) < INF)
    other_storm = [v for v in other if start <= v.created_at.timestamp() <= end]
    closed = "never" if closed_at == INF else f"{closed_at - end:.0f} s"
    lines = [
        f"storm: {len(ids)} complex jobs ({len(fb)} with allow_fallback) at {STORM_RATE}/s; "
        f"{MODEL} overloaded for {STORM_S:.0f} s after {PRE_STORM_S:.0f} s",
        "  fallback jobs done during the storm, by served model: "
        f"{dict(Counter(v.served_model for v in fb if start <= fin(v) <= end))}",
        f"  non-fallback jobs: done on {dict(other_ok)}; of the {len(other_storm)} submitted "
        f"during the storm {sum(1 for v in other_storm if end < fin(v) < INF)} "
        "done after it",
        f"  all jobs: {dict(statuses)}, {len(ids) - len(views)} without a row",
        f"  breaker of {MODEL}: open {'never' if opened is None else f'{opened:.0f} s'} after "
        f"the storm's start, closed {closed} after its end (1 Hz samples)",
        f"  attempts (model outcome n): {', '.join(' '.join(map(str, r)) for r in tried)}",
        f"  simulator: overloaded_by_model {stats['overloaded_by_model']}, "
        f"successful_by_model {stats['successful_by_model']}",
    ]
    return lines, [
        (share >= STORM_DONE_BAR,
         f"storm: {on_time}/{len(eligible)} = {share:.0%} of the fallback jobs submitted during "
         f"the storm (up to 5 s before its end) done on {FALLBACK} by its end "
         f"(>= {STORM_DONE_BAR:.0%})"),
        (statuses["succeeded"] == len(ids) and set(other_ok) <= {MODEL},
         f"storm: no job lost: {statuses['succeeded']}/{len(ids)} succeeded, the non-fallback "
         f"ones on {MODEL} only"),
        (closed != "never", f"storm: breaker closed again after the storm ({closed} after)"),
    ]


def run_rates(ctx: Ctx) -> tuple[list[str], list[Bar]]:
    """The farm, then plain Celery per BASELINES: the table's lines and the farm's bars."""
    results = [run_farm(ctx), *(run_plain(ctx, limit) for limit in BASELINES)]
    (a, b), farm = results[0].window(), results[0]
    lines = [f"\nsteady = successful calls/min from {a.t:.0f} s to {b.t:.0f} s; whole = over "
             "the whole run (initial burst included); 429 share = 429s / all requests of the "
             f"whole run\n{'variant':<34}{'whole RPM':>10}{'steady RPM':>11}{'of limit':>9}"
             f"{'requests':>9}{'429s':>7}{'429 share':>10}"]
    for r in results:
        whole, steady = r.rpm()
        lines += [f"{r.name:<34}{whole:>10.1f}{steady:>11.1f}{steady / RPM:>9.1%}"
                  f"{r.samples[-1].requests:>9}{r.samples[-1].limited:>7}{r.share_429():>10.2%}",
                  f"  jobs: {r.jobs}"]
    lines += [f"  ({'pass' if passed else 'fail'}  {what}: for comparison)"
              for passed, what in (bar for r in results[1:] for bar in rate_bars(r))]
    return lines, [*rate_bars(farm), (farm.failed == 0, f"{farm.name}: {farm.failed} jobs "
                                      "failed, dead or lost under the limits")]


def main() -> int:
    import bench_rates  # ops/; it imports this module's helpers back

    parts = {"all": ["matrix", "rates", "storm"]}.get(SCENARIOS, SCENARIOS.split(","))
    if unknown := set(parts) - {"matrix", "rates", "storm"}:
        raise SystemExit(f"bench-limits: FARM_BENCH_LIMITS_SCENARIOS: unknown {sorted(unknown)}")
    base = Settings()
    if base.broker_url is None or base.database_url is None:
        services.up(base.data_dir)
    (base.data_dir / "run").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["PYTHONPATH"], port = str(ROOT), services.free_port()
    env.setdefault("FARM_SLOTS", "fixed")  # CONCURRENCY slots, as the plain Celery worker's
    sim = procs.start_sim(port, ["--latency", "1.0"], env=env)
    url = f"http://127.0.0.1:{port}"
    env.update({"ANTHROPIC_API_KEY": "sim-bench-key", "ANTHROPIC_BASE_URL": url})
    results: list[tuple[list[str], list[Bar]]] = []
    try:
        settings = Settings(anthropic_api_key="sim-bench-key", anthropic_base_url=url)
        upgrade(settings)
        broker_url = resolve_urls(settings).broker_url
        baseline_url = urllib.parse.urlunsplit(
            urllib.parse.urlsplit(broker_url)._replace(path=f"/{BASELINE_DB}"))
        ctx = Ctx(settings, env, url, redis.Redis.from_url(broker_url), baseline_url)
        print(f"bench-limits ({', '.join(parts)}): {PROCESSES} worker processes x {CONCURRENCY} "
              f"threads, 1 s latency, on {os.cpu_count()} cores; rates and storm: {MODEL} "
              f"limited to {RPM} RPM / {OTPM:,} OTPM", flush=True)
        for part in parts:
            if part != "matrix":
                ctx.sim("/_sim/config", {"model_limits": {MODEL: {"rpm": RPM, "otpm": OTPM}},
                                         "burst_s": None})
            results.append({"matrix": bench_rates.run_matrix, "rates": run_rates,
                            "storm": run_storm}[part](ctx))
    finally:
        procs.stop_all([sim], grace=10)
    for lines, _ in results:
        print("\n".join(lines))
    bars = [bar for _, part_bars in results for bar in part_bars]
    print("\nbars:", *(f"  {'PASS' if passed else 'FAIL'}  {what}" for passed, what in bars),
          sep="\n")
    return 0 if all(passed for passed, _ in bars) else 1


if __name__ == "__main__":
    sys.modules["bench_limits"] = sys.modules[__name__]  # one module for bench_rates' import
    sys.exit(main())
