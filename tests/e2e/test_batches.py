"""Message Batches end to end: real `celery worker` processes run the batch loop against the
simulator's batch API (a short processing time): batch jobs go as one batch at half price,
a worker killed while its batch is in flight is replaced and nothing is lost or billed
twice, failed requests retry in later batches, cancelling works from the CLI, and identical
memoizing batch jobs make one request whose answer a synchronous job reuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tests_batches import admin, until

from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.jobs import Usage
from farm.store.db import Database
from tests_e2e import running_workers, start_worker, stop, wait_for_text, wait_ready

Stats = Callable[[], dict[str, Any]]
FAST = {"FARM_BATCH_MAX_AGE_S": "1", "FARM_BATCH_POLL_S": "0.3", "FARM_BATCH_POLL_MAX_S": "1",
        "FARM_BATCH_TICK_S": "0.3", "FARM_BATCH_RECONCILE_S": "5"}


@pytest.fixture
def env(e2e_env: dict[str, str], sim_url: str, sim_stats: Stats) -> Iterator[dict[str, str]]:
    """The workers' environment, with a fresh simulator bill and a batch processing time
    of one second (restored afterwards)."""
    admin(sim_url, "/_sim/config", {"batch_processing_s": 1.0})
    try:
        yield {**e2e_env, **FAST}
    finally:
        admin(sim_url, "/_sim/config", {"batch_processing_s": 2.0})


def submit(farm: Farm, n: int, prompt: str = "batch fact #{i}?") -> list[uuid.UUID]:
    return farm.submit_many([{"prompt": prompt.format(i=i), "complexity": "simple",
                              "batch": True} for i in range(n)])


def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(sql, params).fetchall()


def batches_of(db: Database, ids: list[uuid.UUID]) -> list[Any]:
    return rows(db, "select * from batches where id in (select batch_id from batch_items "
                    "where job_id = any(%(ids)s)) order by created_at", ids=ids)


def attempts(db: Database, ids: list[uuid.UUID]) -> list[Any]:
    return rows(db, "select * from attempts where job_id = any(%(ids)s) "
                    "order by job_id, attempt", ids=ids)


def check_half_price_and_billed_once(db: Database, ids: list[uuid.UUID], stats: Stats) -> None:
    made = attempts(db, ids)
    assert [(a.attempt, a.outcome) for a in made] == [(1, "ok")] * len(ids)
    prices = default_pricebook()
    for a in made:
        sync = prices.cost(a.model, Usage(input_tokens=a.input_tokens,
                                          output_tokens=a.output_tokens))
        assert sync is not None and a.cost_usd == sync / 2 and a.cost_usd > 0
    billed = stats()
    assert Decimal(billed["billed_batch_usd"]) == sum(a.cost_usd for a in made)
    assert billed["batches"]["requests"] == len(ids)


def test_thirty_batch_jobs_go_as_one_batch_at_half_price(
        env: dict[str, str], farm: Farm, db: Database, tmp_path: Path, sim_stats: Stats) -> None:
    with running_workers(env, [(tmp_path / "w.log", "haiku-simple", 4)]):
        ids = submit(farm, 30)
        views = farm.wait(ids, timeout=60)
    assert {v.status.value for v in views} == {"succeeded"}
    [batch] = batches_of(db, ids)
    assert (batch.request_count, batch.status) == (30, "done")
    assert batch.provider_id.startswith("msgbatch_")
    check_half_price_and_billed_once(db, ids, sim_stats)
    assert sim_stats()["batches"]["created"] == 1


def test_a_worker_killed_while_its_batch_is_in_flight_is_replaced_nothing_twice(
        env: dict[str, str], farm: Farm, db: Database, tmp_path: Path, sim_url: str,
        sim_stats: Stats) -> None:
    admin(sim_url, "/_sim/config", {"batch_processing_s": 4.0})
    victim = start_worker(env, tmp_path / "victim.log", "haiku-simple", 4)
    try:
        wait_ready(tmp_path / "victim.log", victim)
        ids = submit(farm, 30)
        until(lambda: None if [b.status for b in batches_of(db, ids)] == ["in_progress"]
              else "no batch in flight yet", 30)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            stop(victim)
    assert {r.status for r in rows(db, "select status from jobs where id = any(%(ids)s)",
                                   ids=ids)} == {"running"}
    with running_workers(env, [(tmp_path / "heir.log", "haiku-simple", 4)]):
        views = farm.wait(ids, timeout=60)
    assert {v.status.value for v in views} == {"succeeded"}
    [batch] = batches_of(db, ids)
    # the heir polled it (the victim may have been killed before its first poll)
    assert batch.status == "done" and batch.polls >= 1
    check_half_price_and_billed_once(db, ids, sim_stats)
    assert sim_stats()["batches"]["created"] == 1


def test_errored_and_expired_requests_retry_in_later_batches_then_go_dead(
        env: dict[str, str], farm: Farm, db: Database, tmp_path: Path) -> None:
    fine = submit(farm, 1, "all is well")[0]
    errored = submit(farm, 1, "[[sim:status=500]] a server error")[0]
    expired = submit(farm, 1, "[[sim:batch_expire]] too slow")[0]
    with running_workers(env, [(tmp_path / "w.log", "haiku-simple", 4)]):
        views = {v.id: v.status.value for v in farm.wait([fine, errored, expired], timeout=90)}
    assert views == {fine: "succeeded", errored: "dead", expired: "dead"}
    made = attempts(db, [errored, expired])
    # haiku-simple's policy: 3 attempts, each in a batch of its own
    assert sorted((a.job_id == errored, a.attempt, a.outcome) for a in made) == [
        (False, n, "expired") for n in (1, 2, 3)] + [(True, n, "server_error") for n in (1, 2, 3)]
    spread = rows(db, "select job_id, count(distinct batch_id) as n from batch_items "
                      "where job_id = any(%(ids)s) group by job_id", ids=[errored, expired])
    assert sorted(r.n for r in spread) == [3, 3]
    assert farm.dead_letter(errored)["error_class"] == "server_error"
    assert farm.dead_letter(expired)["error_class"] == "expired"


def farm_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cancel_a_waiting_job_and_a_providers_batch_from_the_cli(
        env: dict[str, str], farm: Farm, db: Database, tmp_path: Path, sim_url: str,
        sim_stats: Stats) -> None:
    submitted = farm_cli(env, "submit", "--prompt", "wait for it", "--batch", "--json")
    assert submitted.returncode == 0, submitted.stderr
    [waiting] = json.loads(submitted.stdout)["job_ids"]
    cancelled = farm_cli(env, "cancel", waiting)  # no worker yet: it waits for a batch
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled")
    admin(sim_url, "/_sim/config", {"batch_processing_s": 60.0})
    with running_workers(env, [(tmp_path / "w.log", "haiku-simple", 4)]):
        ids = submit(farm, 3)
        until(lambda: None if [b.status for b in batches_of(db, ids)] == ["in_progress"]
              else "no batch in flight yet", 30)
        [batch] = batches_of(db, ids)
        done = farm_cli(env, "batches", "cancel", batch.provider_id)
        assert done.returncode == 0, done.stderr
        assert "3 job(s) cancelled" in done.stdout
        until(lambda: None if batches_of(db, ids)[0].status == "done" else "open", 30)
    assert {v.status.value for v in farm.statuses(ids)} == {"cancelled"}
    assert [a.outcome for a in attempts(db, ids)] == ["canceled"] * 3
    assert sim_stats()["batches"]["canceled"] == 3
    assert attempts(db, [uuid.UUID(waiting)]) == []
    assert rows(db, "select * from batch_items where job_id = %(id)s",
                id=uuid.UUID(waiting)) == []
    listed = farm_cli(env, "batches", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(r["provider_id"] == batch.provider_id and r["status"] == "done"
               for r in json.loads(listed.stdout))
    shown = farm_cli(env, "batches", "show", str(batch.id))
    assert json.loads(shown.stdout)["request_count"] == 3
    missing = farm_cli(env, "batches", "show", "msgbatch_nonesuch")
    assert missing.returncode == 1 and "no batch msgbatch_nonesuch" in missing.stderr


def test_a_batch_job_sent_with_plain_send_task_waits_for_a_batch(
        env: dict[str, str], farm: Farm, db: Database, tmp_path: Path, sim_stats: Stats) -> None:
    from celery import Celery

    log = tmp_path / "w.log"
    sender = Celery(broker=env["FARM_BROKER_URL"], set_as_current=False)
    try:
        with running_workers(env, [(log, "haiku-simple,farm-intake", 4)]):
            sent = sender.send_task("farm.run_job", queue="farm-intake", kwargs={"request": {
                "prompt": "What is the capital of Peru?", "batch": True}})
            job = uuid.UUID(sent.id)
            [view] = farm.wait([job], timeout=60)
            wait_for_text([log], f"job {job} waits for a Message Batch")
    finally:
        sender.close()
    assert view.status.value == "succeeded"
    assert len(batches_of(db, [job])) == 1
    check_half_price_and_billed_once(db, [job], sim_stats)


def test_identical_memo_batch_jobs_make_one_request_and_a_synchronous_one_reuses_it(
        env: dict[str, str], farm: Farm, tmp_path: Path, sim_stats: Stats) -> None:
    job = {"prompt": "What does a memo save?", "complexity": "simple", "batch": True,
           "memo": True, "tenant": f"memo-{uuid.uuid4().hex[:8]}"}
    with running_workers(env, [(tmp_path / "w.log", "haiku-simple", 4)]):
        ids = farm.submit_many([job] * 5)
        views = farm.wait(ids, timeout=60)
        [sync] = farm.wait([farm.submit(**{**job, "batch": False})], timeout=30)
    assert {v.status.value for v in [*views, sync]} == {"succeeded"}
    assert sorted(v.cache_hit for v in views) == [False] + [True] * 4 and sync.cache_hit
    billed = sim_stats()
    assert (billed["batches"]["requests"], billed["messages_requests"]) == (1, 0)
    [first] = [v for v in views if not v.cache_hit]
    assert {v.saved_usd for v in [*views, sync] if v.cache_hit} == {first.cost_usd}
