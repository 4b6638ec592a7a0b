"""SIGKILL a worker three times during a 1,000-job run: nothing lost, nothing done twice.

A kill between kombu's two steps of taking a message (pop it, then record it as
unacknowledged) loses the message from Redis; the job stays queued in Postgres and the
orphan sweep publishes it again (before the sweep existed, 2 of about 6 runs lost a job).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import (
    attempt_rows,
    in_flight,
    log_text,
    start_worker,
    stop,
    wait_busy,
    wait_ready,
    with_status,
)

JOBS = 1000
KILLS = 3
SLOTS = 50
LEASE_S = 10  # so the test is short; with the default 40 s a lost job runs again within 45 s


@dataclass(frozen=True)
class Kill:
    at: datetime
    held: set[str]  # jobs the victim had taken and not finished when it died
    cut: set[str]  # of those, the ones started (running): their calls were cut short


def test_sigkill_a_worker_three_times(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                      sim_stats: Callable[[], dict[str, object]]) -> None:
    env = {**e2e_env, "FARM_LEASE_S": str(LEASE_S), "FARM_REAPER_INTERVAL_S": "2",
           "FARM_ORPHAN_SWEEP_S": "5", "FARM_ORPHAN_AGE_S": "15"}
    survivor_log, victim_log = tmp_path / "survivor.log", tmp_path / "victim-0.log"
    survivor = start_worker(env, survivor_log, "haiku-simple", SLOTS)
    victim = start_worker(env, victim_log, "haiku-simple", SLOTS)
    kills: list[Kill] = []
    try:
        wait_ready(survivor_log, survivor)
        wait_ready(victim_log, victim)
        ids = farm.submit_many([{"prompt": f"[[sim:latency=1]] fact #{i}?",
                                 "complexity": "simple"} for i in range(JOBS)])
        for n in range(KILLS):
            wait_busy(farm.engine, victim_log, ids, SLOTS // 2)  # calls under way on it
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            at = datetime.now(UTC)
            # its log ends where it died: what it had taken and not finished then; those
            # still running in Postgres were cut short (no other worker can have them yet:
            # their leases still run)
            held = in_flight(log_text(victim_log)) & set(map(str, ids))
            cut = with_status(farm.engine, held, JobStatus.RUNNING.value)
            assert cut, f"kill {n + 1}: no call under way on the victim ({len(held)} held)"
            kills.append(Kill(at, held, cut))
            victim_log = tmp_path / f"victim-{n + 1}.log"
            victim = start_worker(env, victim_log, "haiku-simple", SLOTS)
            wait_ready(victim_log, victim)
        try:
            views = farm.wait(ids, timeout=240)
        except TimeoutError:
            with farm.engine.connect() as conn:
                print("STUCK", conn.execute(text(
                    "select id, status, attempts, lease_until, next_run_at, error, created_at, "
                    "started_at from jobs where id = any(:ids) and status in "
                    "('queued', 'running')"), {"ids": ids}).all())
            raise
        ok_rows = attempt_rows(farm.engine, ids, "ok")
        with farm.engine.connect() as conn:
            ok_started: dict[str, datetime] = dict(conn.execute(text(
                "select job_id::text, started_at from attempts where job_id = any(:ids) "
                "and outcome = 'ok'"), {"ids": ids}).all())
    finally:
        stop(victim)
        stop(survivor)
    calls = int(sim_stats()["messages_requests"])  # type: ignore[call-overload]
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * JOBS
    assert all(ok_rows.get(str(i)) == 1 for i in ids), "a job was accounted twice or not at all"
    starts = {str(v.id): v.attempts for v in views}
    for n, kill in enumerate(kills, 1):
        # each job cut short ran again: a second start, and its one successful call began
        # after the kill
        not_again = {job: starts[job] for job in kill.cut if starts[job] < 2}
        assert not not_again, f"kill {n}: cut short, never started again: {not_again}"
        early = {job for job in kill.cut if ok_started[job] <= kill.at}
        assert not early, f"kill {n}: cut short, yet its call was not made again: {early}"
    extra = calls - JOBS
    cut_short = sum(len(kill.cut) for kill in kills)
    assert 0 <= extra <= cut_short, (extra, cut_short)  # only a cut call is made again
    last_kill = {job: kill.at for kill in kills for job in kill.cut}
    slowest = max((ok_started[job] - at).total_seconds() for job, at in last_kill.items())
    print(f"\nkills: held {[len(k.held) for k in kills]}, cut short {[len(k.cut) for k in kills]};"
          f" extra provider calls: {extra}; slowest re-run after its kill: {slowest:.1f}s")
