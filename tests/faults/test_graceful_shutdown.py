"""SIGTERM a worker in the middle of a run: its running jobs finish, nothing is lost, no
call is made twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import (
    attempt_rows,
    calls_under_way,
    in_flight,
    log_text,
    running_workers,
    succeeded,
    wait_busy,
)

JOBS = 80  # 20 on each worker, 40 queued: the survivor has work after the SIGTERM
SHUTDOWN_MARK = "worker: Warm shutdown (MainProcess)"  # Celery's line on SIGTERM


def _around_sigterm(log: Path) -> tuple[str, str]:
    """The worker's log before and after it took the SIGTERM."""
    text = log_text(log)
    assert SHUTDOWN_MARK in text, f"no {SHUTDOWN_MARK!r} in {log.name}"
    at = text.index(SHUTDOWN_MARK)
    return text[:at], text[at:]


def test_sigterm_lets_running_jobs_finish(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                          sim_stats: Callable[[], dict[str, object]]) -> None:
    slots = 20
    survivor_log, leaving_log = tmp_path / "survivor.log", tmp_path / "leaving.log"
    specs = [(log, "haiku-simple", slots) for log in (survivor_log, leaving_log)]
    with running_workers(e2e_env, specs) as (_, leaving):
        ids = farm.submit_many([{"prompt": f"[[sim:latency=2]] graceful {i}?",
                                 "complexity": "simple"} for i in range(JOBS)])
        wait_busy(farm.engine, leaving_log, ids, slots)  # every slot of it in a call
        # its calls under way (started in Postgres, open in its log) as the signal goes
        running = calls_under_way(farm.engine, leaving_log, ids)
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(60) == 0  # warm shutdown
        views = farm.wait(ids, timeout=120)
    _around_sigterm(leaving_log)  # it did take the signal
    assert running, "the leaving worker had no job in flight at the SIGTERM"
    # it let them finish, itself: none was abandoned or handed back
    text = log_text(leaving_log)
    unfinished = running - succeeded(text)
    assert not unfinished, f"in flight at the SIGTERM, not finished by the worker: {unfinished}"
    # what it had received but not started went back to the queue (Celery's warm shutdown)
    # and ran once elsewhere (attempts and calls below)
    assert not (in_flight(text) & running)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * JOBS
    assert all(v.attempts == 1 for v in views)
    assert attempt_rows(farm.engine, ids) == {str(job): 1 for job in ids}
    assert sim_stats()["messages_requests"] == JOBS  # nothing was run twice
    print(f"\nSIGTERM: {len(running)} jobs in flight on the leaving worker, all finished by it")


def test_sigterm_grace_is_bounded(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                  sim_stats: Callable[[], dict[str, object]]) -> None:
    """Jobs longer than the grace: handed back when it ends, run again on another worker."""
    slots, grace_s = 10, 1
    env = {**e2e_env, "FARM_SHUTDOWN_GRACE_S": str(grace_s), "FARM_REAPER_INTERVAL_S": "1"}
    survivor_log, leaving_log = tmp_path / "survivor.log", tmp_path / "leaving.log"
    specs = [(log, "haiku-simple", slots) for log in (survivor_log, leaving_log)]
    with running_workers(env, specs) as (_, leaving):
        # calls three times as long as the grace: none can end inside it
        ids = farm.submit_many([{"prompt": f"[[sim:latency={3 * grace_s}]] long {i}?",
                                 "complexity": "simple"} for i in range(2 * slots)])
        wait_busy(farm.engine, leaving_log, ids, slots)  # every slot of it in a call
        leaving.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        # status 1 is the grace running out (a warm shutdown that waited would end with 0)
        assert leaving.wait(60) == 1
        waited = time.monotonic() - sent
        views = farm.wait(ids, timeout=120)
    before, after = _around_sigterm(leaving_log)
    # this test's jobs only: a message an earlier test left in the queue (a delayed copy of
    # a job long finished, say) may be held by the worker too
    running = in_flight(before) & {str(job) for job in ids}
    assert len(running) == slots, running
    assert (f"shutdown grace of {grace_s}s is over: {len(running)} running job(s) handed back"
            in after)
    assert not running & succeeded(after)  # it did not finish them …
    # … they ran again elsewhere: a second start; every other job started once
    attempts = {str(v.id): v.attempts for v in views}
    assert {job: attempts[job] for job in running} == dict.fromkeys(running, 2)
    assert {n for job, n in attempts.items() if job not in running} == {1}
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * len(ids)
    assert attempt_rows(farm.engine, ids, "ok") == {str(job): 1 for job in ids}  # once each
    print(f"\nSIGTERM with a {grace_s} s grace: exited after {waited:.1f}s; {len(running)} jobs "
          f"handed back and run again; "
          f"{int(sim_stats()['messages_requests']) - len(ids)} abandoned calls")  # type: ignore[call-overload]
