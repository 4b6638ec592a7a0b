"""Elastic slots on a real worker (farm.pool, farm.worker.pool_step): under a backlog its
slots grow from 10 to 100 and, idle, shrink back to 10, taking no more messages than it
has slots and losing no job; its probes answer; past FARM_WORKER_MAX_JOBS or
FARM_WORKER_MAX_RSS_MB it drains, exits 0, and its jobs are run by the next worker.

The policy is the issue's (10-100, 80 %/20 %, +10/-5) with short timings, so that the ramp
takes seconds, not minutes. The timeline is printed (-s)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx2
import pytest
import redis
from sqlalchemy import text

from farm.broker.layout import UNACKED
from farm.client import Farm
from farm.services import free_port
from tests_e2e import start_worker, stop, wait_ready, wait_until

QUEUE = "haiku-simple"
RAMP = {"window_s": 2, "up_cooldown_s": 1, "down_cooldown_s": 1}  # a step per 1 s tick
CHANGE = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] slots "
                    r"(\d+) -> (\d+) \(utilisation (\d+)%")


def changes(log: Path) -> list[tuple[float, int, int, int]]:
    """(unix time, before, after, utilisation %) of each slot change the worker logged."""
    found = []
    for stamp, before, after, used in CHANGE.findall(log.read_text(errors="replace")):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.append((at, int(before), int(after), int(used)))
    return found


def jobs(count: int, latency_s: float, tag: str) -> list[dict[str, object]]:
    return [{"prompt": f"[[sim:latency={latency_s:g}]] {tag} #{i}", "complexity": "simple",
             "max_tokens": 32} for i in range(count)]


def test_slots_grow_from_10_to_100_under_load_and_return_to_10_with_no_job_lost(
        e2e_env: dict[str, str], farm: Farm, tmp_path: Path) -> None:
    env = {**e2e_env, "FARM_SLOTS": json.dumps(RAMP)}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, QUEUE, 100)
    try:
        wait_ready(log, worker)
        assert "slots 10 (bounds 10-100, elastic) on haiku-simple" in log.read_text()
        # before its first change the worker holds no more messages than its 10 slots,
        # however long the backlog: observed, not assumed (it does take 10). A thread reads
        # how many it holds from before the submit on, each reading stamped when it returned
        # (the first change may come while the submit is still under way)
        held: list[tuple[float, int]] = []
        sampling = threading.Event()

        def sample() -> None:
            reader = redis.Redis.from_url(env["FARM_BROKER_URL"])
            try:
                while not sampling.is_set():
                    count = int(reader.hlen(UNACKED))
                    held.append((time.time(), count))
                    time.sleep(0.02)
            finally:
                reader.close()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.time()
        # the backlog (1,100 slot-seconds: it outlasts the ramp, 10->100 in ~500), and last
        # in the queue 10 jobs of 16 s: they still run while the idle slots are given back
        # (10 busy of 100: below 20 %) and hold them at 45 (22 %) a while
        ids = farm.submit_many(jobs(550, 2.0, "ramp") + jobs(10, 16.0, "long"))
        try:
            wait_until(lambda: None if changes(log) else "a first change", 60)
        finally:
            sampling.set()
            sampler.join(10)
        first = changes(log)[0][0]
        # the change is applied just before it is logged: readings of the last 0.2 s before
        # its stamp are left out (it comes a second or more after the 10 are taken)
        early = [count for at, count in held if at < first - 0.2]
        assert early and max(early) == 10, (len(held), early[-20:])
        farm.wait(ids, timeout=300)
        done = time.time()
        wait_until(lambda: None if changes(log) and changes(log)[-1][2] == 10
                   else "the slots back at 10", 120)
        timeline = changes(log)
        print(f"\n550 jobs of 2 s and 10 of 16 s submitted at 0 s; all ended at "
              f"{done - t0:.1f} s")
        for at, before, after, used in timeline:
            print(f"  {at - t0:6.1f} s  slots {before:3d} -> {after:3d}  (utilisation {used}%)")
        steps = [(before, after) for _, before, after, _ in timeline]
        ups = [after for before, after in steps if after > before]
        assert ups == list(range(20, 101, 10)), steps  # +10 at a time, up to 100
        downs = [before - after for before, after in steps if after < before]
        assert downs and set(downs) == {5} and steps[-1][1] == 10
        # it shrank while the long jobs ran (utilisation above 0), none of them interrupted
        # (one attempt each, below), and stopped shrinking while they held 20 % of its slots
        assert any(after < before and used > 0 for _, before, after, used in timeline)
    finally:
        stop(worker)
    with farm.engine.connect() as conn:
        status = dict(conn.execute(text(
            "select status, count(*) from jobs where id = any(:ids) group by 1"),
            {"ids": ids}).all())
        attempts = dict(conn.execute(text(
            "select outcome, count(*) from attempts where job_id = any(:ids) group by 1"),
            {"ids": ids}).all())
    assert status == {"succeeded": 560}
    assert attempts == {"ok": 560}  # one attempt each: nothing interrupted or run twice


def _probe(port: int, path: str) -> tuple[int, str]:
    try:
        answer = httpx2.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx2.HTTPError as exc:
        return 0, type(exc).__name__
    return answer.status_code, answer.text.strip()


def test_a_worker_past_its_job_count_drains_exits_0_and_the_next_runs_the_rest(
        e2e_env: dict[str, str], farm: Farm, tmp_path: Path) -> None:
    port = free_port()
    env = {**e2e_env, "FARM_WORKER_MAX_JOBS": "20", "FARM_HEALTH_PORT": str(port),
           "FARM_SLOTS": "fixed"}
    log = tmp_path / "first.log"
    worker = start_worker(env, log, QUEUE, 10)
    nxt: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(log, worker)
        assert _probe(port, "/livez") == (200, "ok")
        wait_until(lambda: None if _probe(port, "/readyz") == (200, "ok") else "ready", 20)
        ids = farm.submit_many(jobs(60, 3.0, "recycle"))
        seen: list[tuple[int, str]] = []

        def draining() -> str | None:
            seen.append(_probe(port, "/readyz"))
            return None if seen[-1][1].startswith("draining") else f"readyz {seen[-1]}"

        wait_until(draining, 60, interval=0.2)
        assert seen[-1] == (503, "draining: 20 jobs done, FARM_WORKER_MAX_JOBS is 20") or \
            re.fullmatch(r"draining: \d+ jobs done, FARM_WORKER_MAX_JOBS is 20", seen[-1][1])
        assert _probe(port, "/livez")[0] == 200  # live while it drains
        assert worker.wait(60) == 0
        out = log.read_text()
        assert "recycling this worker process" in out and "Warm shutdown" in out
        with farm.engine.connect() as conn:
            finished = conn.execute(text(
                "select count(*) from jobs where id = any(:ids) and status = 'succeeded'"),
                {"ids": ids}).scalar_one()
        assert 20 <= finished < 60  # it finished what it ran, and left the rest queued
        # the rest (at most 40) in one round of calls
        nxt = start_worker({**env, "FARM_WORKER_MAX_JOBS": "0"}, tmp_path / "next.log", QUEUE,
                           40)
        wait_ready(tmp_path / "next.log", nxt)
        farm.wait(ids, timeout=120)
        with farm.engine.connect() as conn:
            attempts = dict(conn.execute(text(
                "select outcome, count(*) from attempts where job_id = any(:ids) group by 1"),
                {"ids": ids}).all())
        assert attempts == {"ok": 60}
    finally:
        if worker.poll() is None:
            stop(worker)
        if nxt is not None:
            stop(nxt)


def test_a_worker_over_its_memory_limit_recycles_at_once(e2e_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker({**e2e_env, "FARM_WORKER_MAX_RSS_MB": "1"}, log, QUEUE, 4)
    try:
        wait_ready(log, worker)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            stop(worker)
    assert re.search(r"recycling this worker process: resident memory \d+ MB is above "
                     r"FARM_WORKER_MAX_RSS_MB \(1\)", log.read_text())


@pytest.fixture(autouse=True)
def _quiet_queue(e2e_env: dict[str, str]) -> None:
    """No message of an earlier test waits on the queue."""
    client = redis.Redis.from_url(e2e_env["FARM_BROKER_URL"])
    try:
        from farm.broker.layout import queue_keys

        client.delete(*queue_keys(QUEUE))
    finally:
        client.close()
