"""Hard budgets under load: 3 real workers x 100 threads against the simulator, one tenant
capped by a hard budget, another running beside it untouched.

The capped tenant's calls cost close to their worst case (the simulator answers nearly
``max_tokens`` output tokens), so the budget's room runs out after a few dozen calls while
hundreds of its jobs are being taken at once. Spend must stay within the limit plus one
call's worst case; the jobs left wait (no call, no attempt used) and run as soon as the
budget is raised. A budget that fails its jobs sends them to the dead-letter queue, and a
replay after the raise runs them. The budgets are monthly: a test running across midnight UTC
(not across a month's end) keeps one period.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from farm.client import Farm
from farm.costs.estimate import worst_case
from farm.costs.money import usd
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, JobStatus
from tests_e2e import attempt_rows, running_workers, wait_until

MODEL = "claude-haiku-4-5"  # the haiku-simple queue's model
DEFER_MAX_S = 60.0  # the workers' longest deferral countdown (set in their env below)
OUTPUT_TOKENS = 1000  # of max_tokens 1024: each call costs ~97 % of its worst case


def request(tenant: str, i: int, latency: float) -> dict[str, Any]:
    return {"prompt": f"[[sim:latency={latency}]] [[sim:tokens={OUTPUT_TOKENS}]] "
                      f"{tenant} question #{i:04d}?",
            "complexity": "simple", "tenant": tenant, "max_tokens": 1024}


def worst(job: dict[str, Any]) -> Decimal:
    price = default_pricebook().price(MODEL)
    assert price is not None
    return worst_case(price, JobRequest.model_validate(job)).usd


def job_rows(engine: Engine, ids: list[uuid.UUID]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "select id::text as id, status, attempts, wait_reason, next_run_at, finished_at, "
            "model from jobs where id = any(:ids)"), {"ids": ids}).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def attempt_costs(engine: Engine, tenant: str) -> tuple[int, Decimal]:
    """How many calls the tenant's jobs made, and what they cost (Postgres, the ledger)."""
    with engine.connect() as conn:
        n, total = conn.execute(text(
            "select count(*), coalesce(sum(a.cost_usd), 0) from attempts a "
            "join jobs j on j.id = a.job_id where j.tenant = :t"), {"t": tenant}).one()
    return int(n), Decimal(total)


def peak_in_flight(engine: Engine, ids: list[uuid.UUID]) -> int:
    """The most calls of these jobs that were under way at the same moment (attempt rows)."""
    with engine.connect() as conn:
        spans = conn.execute(text("select started_at, finished_at from attempts "
                                  "where job_id = any(:ids)"), {"ids": ids}).all()
    edges = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def farm_status(env: dict[str, str], job: str) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", "status", job], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def budget_env(e2e_env: dict[str, str]) -> dict[str, str]:
    # fewer database connections per worker than the default (3 x 30 would nearly fill a
    # stock PostgreSQL's 100); the threads queue for them
    return {**e2e_env, "FARM_DB_POOL_SIZE": "6", "FARM_DEFER_MAX_S": str(DEFER_MAX_S)}


@pytest.fixture
def cleanup_budgets(farm: Farm) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for budget_id in made:
        farm.budgets.remove(budget_id)


def test_budget_under_load(budget_env: dict[str, str], farm: Farm, tmp_path: Path,
                           cleanup_budgets: list[str]) -> None:
    capped_jobs = [request("capped", i, 0.5) for i in range(600)]
    # the other tenant's calls are slow: they stay in flight while the capped ones crowd in
    other_jobs = [request("other", i, 4) for i in range(270)]
    one_call = worst(capped_jobs[0])
    limit = Decimal("0.20")  # about 38 calls' worth
    budget, _ = farm.budgets.set(tenant="capped", usd=limit, period="month", on_exceed="wait")
    cleanup_budgets.append(budget.id)
    prefix = f"budget {budget.id}:"
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    with running_workers(budget_env, [(log, "haiku-simple", 100) for log in logs]):
        # interleaved, so both tenants' jobs are taken from the first moment
        n = len(other_jobs)
        mixed = [job for pair in zip(capped_jobs[:n], other_jobs, strict=True)
                 for job in pair] + capped_jobs[n:]
        t0 = time.monotonic()
        ids = farm.submit_many(mixed)
        capped = [i for i, job in zip(ids, mixed, strict=True) if job["tenant"] == "capped"]
        other = [i for i, job in zip(ids, mixed, strict=True) if job["tenant"] == "other"]
        snapshot: dict[str, dict[str, Any]] = {}

        def settled() -> str | None:
            """The other tenant done; each capped job succeeded or waiting for the budget."""
            snapshot.clear()
            snapshot.update(job_rows(farm.engine, capped + other))
            others = [snapshot[str(i)]["status"] for i in other]
            if others.count("succeeded") < len(other):
                return f"other tenant: {others.count('succeeded')} of {len(other)} succeeded"
            unsettled = [r for r in (snapshot[str(i)] for i in capped)
                         if not (r["status"] == "succeeded" or (
                             r["status"] == "queued" and (r["wait_reason"] or "")
                             .startswith(prefix)))]
            return f"{len(unsettled)} capped job(s) neither done nor waiting for the budget" \
                if unsettled else None

        wait_until(settled, timeout=60, interval=0.5)
        settled_s = time.monotonic() - t0
        calls, pg_spent = attempt_costs(farm.engine, "capped")
        [view] = [v for v in farm.budgets.list() if v.budget.id == budget.id]
        rows = [snapshot[str(i)] for i in capped]
        done = [r for r in rows if r["status"] == "succeeded"]
        waiting = [r for r in rows if r["status"] == "queued"]
        assert done and waiting and len(done) + len(waiting) == len(capped)
        assert calls == len(done), "a waiting capped job made a call"
        assert all(r["attempts"] == 0 for r in waiting), "a waiting job used an attempt"
        assert all(r["model"] == MODEL for r in rows)
        # the spend: within the limit plus one call's worst case, and the ledger agrees
        assert pg_spent <= limit + one_call, (pg_spent, limit, one_call)
        assert view.spent_usd == pg_spent and view.reserved_usd == 0, view
        overshoot = pg_spent - limit
        peak = peak_in_flight(farm.engine, capped + other)
        print(f"\nMEASURED budget overshoot: {usd(overshoot, significant=4)} "
              f"(spent {usd(pg_spent, significant=4)} of {usd(limit)} in {calls} calls; "
              f"one call's worst case {usd(one_call, significant=4)}; ledger "
              f"{usd(view.spent_usd, significant=4)}; {len(waiting)} capped jobs waiting; "
              f"peak calls in flight {peak}; settled after {settled_s:.1f}s)")
        # farm status says why a job waits
        shown = farm_status(budget_env, waiting[0]["id"])
        assert "queued" in shown and prefix in shown, shown

        # raising the budget wakes the waiting jobs: they run at once, not at their countdown
        due = {r["id"]: r["next_run_at"] for r in waiting}
        raised_at = time.monotonic()
        _, woken = farm.budgets.set(tenant="capped", usd="100", period="month")
        views = farm.wait(capped, timeout=45)
        released_s = time.monotonic() - raised_at
        assert woken == len(waiting)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * len(capped)
    assert all(v.status is JobStatus.SUCCEEDED for v in farm.statuses(other))
    finished: dict[str, datetime] = {str(v.id): v.finished_at for v in views
                                     if v.finished_at is not None}
    late = [j for j, at in due.items() if finished[j] >= at]
    assert not late, f"{len(late)} waiting job(s) ran only at their countdown"
    assert released_s < DEFER_MAX_S / 2, released_s
    calls_after, _ = attempt_costs(farm.engine, "capped")
    assert calls_after == len(capped)  # one call each: nothing lost, nothing run twice
    print(f"MEASURED budget raise: {len(waiting)} waiting jobs all succeeded "
          f"{released_s:.1f}s after the raise (deferral countdown up to {DEFER_MAX_S:.0f}s)")


def test_budget_that_fails_jobs_then_replay(budget_env: dict[str, str], farm: Farm,
                                            tmp_path: Path,
                                            cleanup_budgets: list[str]) -> None:
    tenant = "capped-fail"
    jobs = [request(tenant, i, 0.3) for i in range(60)]
    one_call = worst(jobs[0])
    limit = Decimal("0.05")  # about 9 calls' worth
    budget, _ = farm.budgets.set(tenant=tenant, usd=limit, period="month", on_exceed="fail")
    cleanup_budgets.append(budget.id)
    log = tmp_path / "worker.log"
    with running_workers(budget_env, [(log, "haiku-simple", 50)]):
        ids = farm.submit_many(jobs)
        views = farm.wait(ids, timeout=60)
        done = {v.id for v in views if v.status is JobStatus.SUCCEEDED}
        dead = {v.id for v in views if v.status is JobStatus.DEAD}
        assert done and dead and len(done) + len(dead) == len(ids), views
        # a dead job made no call and used no attempt
        assert not set(attempt_rows(farm.engine, dead)), "a dead-lettered job made a call"
        assert all(v.attempts == 0 for v in views if v.id in dead)
        calls, spent = attempt_costs(farm.engine, tenant)
        assert calls == len(done) and spent <= limit + one_call, (calls, spent)
        letters = {r["job_id"]: r for r in farm.dead_letters(limit=1000)}
        assert dead <= set(letters)
        assert {letters[j]["error_class"] for j in dead} == {"budget_exceeded"}
        assert all(f"budget {budget.id}:" in (letters[j]["error_message"] or "") for j in dead)
        print(f"\nMEASURED budget overshoot (on_exceed=fail): {usd(spent - limit, significant=4)}"
              f" ({len(done)} calls, {len(dead)} jobs dead-lettered)")

        farm.budgets.set(tenant=tenant, usd="100", period="month", on_exceed="fail")
        pairs = farm.replay(sorted(dead, key=str))
        assert {old for old, _ in pairs} == dead
        again = farm.wait([new for _, new in pairs], timeout=45)
    assert [v.status for v in again] == [JobStatus.SUCCEEDED] * len(dead)
    assert all(v.attempts == 1 for v in again)
