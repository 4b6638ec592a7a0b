"""Message Batches in real Postgres and Redis against the simulator's batch API (in this
process, driven by the official SDK): jobs recorded unpublished, one flusher per model,
results recorded exactly once under two concurrent recorders, at half the synchronous price,
a row left creating by a crash adopted or released, a batch too large split."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
import redis
from tests_batches import admin, batching, in_process_sim, until

from farm.batches import collector, loop, results, rows, store
from farm.batches.context import Batching
from farm.batches.reconcile import Reconciler
from farm.broker import layout
from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.jobs import Usage
from farm.reliability import dlq
from farm.settings import Settings
from farm.store.db import Database
from farm.worker import events

HAIKU = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with in_process_sim(batch_processing_s=0.3) as url:
        yield url


@pytest.fixture
def settings(broker_url: str, database_url: str, sim: str, tmp_path: Path) -> Settings:
    admin(sim, "/_sim/reset", {})
    admin(sim, "/_sim/config", {"batch_processing_s": 0.3})
    return Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path,
                    anthropic_api_key="sk-test-batches", anthropic_base_url=sim,
                    batch_max_age_s=0, batch_poll_s=0.1, batch_poll_max_s=0.3,
                    batch_reconcile_s=1.0)


@pytest.fixture
def farm(settings: Settings) -> Iterator[Farm]:
    with Farm(settings) as f:
        yield f


@pytest.fixture
def b(settings: Settings) -> Iterator[Batching]:
    with batching(settings) as made:
        yield made


def submit(farm: Farm, n: int, prompt: str = "fact #{i}?", **fields: Any) -> list[uuid.UUID]:
    return farm.submit_many([{"prompt": prompt.format(i=i), "complexity": "simple",
                              "batch": True, **fields} for i in range(n)])


def jobs(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    with db.connect() as conn:
        found = conn.execute("select * from jobs where id = any(%(ids)s)", {"ids": ids})
        return {row.id: row for row in found}


def attempt_rows(db: Database, ids: list[uuid.UUID]) -> list[Any]:
    with db.connect() as conn:
        return conn.execute("select * from attempts where job_id = any(%(ids)s) "
                            "order by job_id, attempt", {"ids": ids}).fetchall()


def batch_rows(db: Database) -> list[Any]:
    with db.connect() as conn:
        return conn.execute("select * from batches order by created_at").fetchall()


def drive(b: Batching, ids: list[uuid.UUID], timeout: float = 30) -> None:
    """Run the batch loop's rounds (collector, poller) until every job is finished."""
    reconciler = Reconciler(b)

    def left() -> str | None:
        loop.collect(b, reconciler)
        loop.poll(b)
        busy = [r.status for r in jobs(b.db, ids).values() if r.status in ("queued", "running")]
        return f"{len(busy)} job(s) unfinished" if busy else None

    until(left, timeout)


def test_batch_jobs_are_recorded_unpublished_and_waiting(farm: Farm, db: Database,
                                                         broker_url: str) -> None:
    ids = submit(farm, 3) + farm.submit_many([{"prompt": "now", "complexity": "simple"}])
    found = jobs(db, ids)
    assert [found[i].batched for i in ids] == [True, True, True, False]
    assert {found[i].wait_reason for i in ids[:3]} == {"waiting for a Message Batch"}
    client = redis.Redis.from_url(broker_url)
    try:
        present = layout.ids_in_redis(client, {"haiku-simple"}, scan_max=10_000)
    finally:
        client.close()
    assert present == {ids[3]}  # only the synchronous job has a message


def test_two_concurrent_flushers_make_one_batch(farm: Farm, db: Database, b: Batching) -> None:
    ids = submit(farm, 10)
    barrier = threading.Barrier(2)
    made: list[list[uuid.UUID]] = []

    def flush() -> None:
        barrier.wait()
        made.append(loop.collect(b, Reconciler(b)))

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(m) for m in made) == [0, 1]
    [batch] = batch_rows(db)
    assert (batch.request_count, batch.status, batch.model) == (10, "in_progress", HAIKU)
    assert batch.provider_id.startswith("msgbatch_")
    found = jobs(db, ids)
    assert {(r.status, r.attempts, r.lease_until) for r in found.values()} == {
        ("running", 1, None)}


def test_results_are_recorded_exactly_once_by_two_concurrent_recorders_at_half_price(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    ids = submit(farm, 12)
    [batch_id] = loop.collect(b, Reconciler(b))
    [provider_id] = [r.provider_id for r in batch_rows(db)]
    until(lambda: None if b.client.messages.batches.retrieve(provider_id).processing_status
          == "ended" else "in progress", 20)
    with b.db.connect() as conn:
        conn.execute("update batches set next_poll_at = now() where id = %(id)s",
                     {"id": batch_id})
        [row] = rows.due(conn, lease_s=60)
    heard: list[dict[str, Any]] = []

    def listen(signal: Any, **kw: Any) -> None:
        heard.append({"signal": signal.name, **kw})

    for signal in (events.call_finished, events.job_finished):
        signal.connect(listen, weak=False, dispatch_uid=f"test.{signal.name}")
    new: list[int] = []
    barrier = threading.Barrier(2)

    def record() -> None:
        with b.db.connect() as conn:
            barrier.wait()
            new.append(results.record_all(b, conn, row))

    try:
        threads = [threading.Thread(target=record) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for signal in (events.call_finished, events.job_finished):
            signal.disconnect(listen, dispatch_uid=f"test.{signal.name}")
    assert sum(new) == 12  # each result recorded by one of the two
    made = attempt_rows(db, ids)
    assert [(a.attempt, a.outcome) for a in made] == [(1, "ok")] * 12
    assert {r.status for r in jobs(db, ids).values()} == {"succeeded"}
    prices = default_pricebook()
    for a in made:
        sync = prices.cost(a.model, Usage(input_tokens=a.input_tokens,
                                          output_tokens=a.output_tokens))
        assert sync is not None and a.cost_usd == sync / 2 and a.cost_usd > 0
    calls = [h for h in heard if h["signal"] == "farm.call_finished"]
    assert len(calls) == 12 and all(h["batch"] and h["outcome"] == "ok" for h in calls)
    assert sum(h["cost"] for h in calls) == sum(a.cost_usd for a in made)
    assert sorted(h["outcome"] for h in heard if h["signal"] == "farm.job_finished") == \
        ["succeeded"] * 12
    assert Decimal(admin(sim, "/_sim/stats")["billed_batch_usd"]) == \
        sum(a.cost_usd for a in made)


def claim_only(b: Batching, ids: list[uuid.UUID]) -> tuple[uuid.UUID, list[Any]]:
    """What a creator that died before keeping the provider's id leaves: the row, creating.
    Returns it and the requests the creator was sending."""
    with b.db.connect() as conn:
        built = [collector.build(b, job)[0] for job in store.candidates(conn, HAIKU, 100)
                 if job.id in ids]
        batch_id = uuid.uuid4()
        claimed = store.claim(conn, batch_id, HAIKU, [(r.job.id, r.worst, None) for r in built],
                              1000, "creating")
        assert store.candidates(conn, HAIKU, 100) == []  # claimed: nothing waits any more
    assert set(claimed) == set(ids)
    return batch_id, [{"custom_id": str(r.job.id), "params": r.params} for r in built]


def test_a_batch_created_by_a_creator_that_died_is_adopted_never_created_twice(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    admin(sim, "/_sim/config", {"batch_processing_s": 1.5})
    ids = submit(farm, 5)
    batch_id, requests = claim_only(b, ids)
    made = b.client.messages.batches.create(requests=requests)  # then the creator died
    reconciler = Reconciler(b)
    with b.db.connect() as holder, b.db.connect() as conn:
        # while its creator holds the model's flush lock, nobody touches the row
        assert store.try_flush_lock(holder, HAIKU)
        reconciler.run(conn)
        assert [r.status for r in batch_rows(db)] == ["creating"]
        store.flush_unlock(holder, HAIKU)
        reconciler.run(conn)  # the provider's batch is in progress: it may be this row's
        assert [(r.status, r.provider_id) for r in batch_rows(db)] == [("creating", None)]
    until(lambda: None if b.client.messages.batches.retrieve(made.id).processing_status
          == "ended" else "in progress", 20)
    drive(b, ids)
    [row] = batch_rows(db)
    assert (row.id, row.provider_id, row.status) == (batch_id, made.id, "done")
    assert [(a.attempt, a.outcome) for a in attempt_rows(db, ids)] == [(1, "ok")] * 5
    assert admin(sim, "/_sim/stats")["batches"]["created"] == 1


def test_a_batch_never_created_is_released_after_the_delay_and_its_jobs_batch_again(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    ids = submit(farm, 7)
    batch_id, _ = claim_only(b, ids)
    reconciler = Reconciler(b)
    with b.db.connect() as conn:
        reconciler.run(conn)  # too soon: the provider may not list it yet
        assert [r.status for r in batch_rows(db)] == ["creating"]

        def released() -> str | None:
            reconciler.run(conn)
            return None if batch_rows(db)[0].status == "failed" else "still creating"

        until(released, 10)
    [row] = batch_rows(db)
    assert row.id == batch_id and "never created" in row.error
    assert {(r.status, r.attempts) for r in jobs(db, ids).values()} == {("queued", 0)}
    drive(b, ids)
    assert [(a.attempt, a.outcome) for a in attempt_rows(db, ids)] == [(1, "ok")] * 7
    assert admin(sim, "/_sim/stats")["batches"]["created"] == 1


class TooLarge:
    """The SDK's batches, refusing (413) a batch of more than ``most`` requests."""

    def __init__(self, real: Any, most: int) -> None:
        self.real, self.most, self.sizes = real, most, list[int]()

    def create(self, *, requests: list[Any]) -> Any:
        self.sizes.append(len(requests))
        if len(requests) > self.most:
            response = httpx2.Response(413, request=httpx2.Request("POST", "http://sim/"))
            raise anthropic.APIStatusError("too large", response=response, body={
                "type": "error", "error": {"type": "request_too_large",
                                           "message": "the batch exceeds the size limit"}})
        return self.real.create(requests=requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_batch_refused_as_too_large_is_split_in_halves(farm: Farm, db: Database,
                                                         b: Batching) -> None:
    fake = TooLarge(b.client.messages.batches, 2)
    client: Any = type("C", (), {"messages": type("M", (), {"batches": fake})()})()
    small = replace(b, runtime=replace(b.runtime, client=client))
    ids = submit(farm, 5)
    drive(small, ids)
    assert fake.sizes == [5, 2, 3, 1, 2]
    made = batch_rows(db)
    assert sorted((r.status, r.request_count) for r in made) == [
        ("done", 1), ("done", 2), ("done", 2), ("failed", 3), ("failed", 5)]
    assert [(a.attempt, a.outcome) for a in attempt_rows(db, ids)] == [(1, "ok")] * 5


def test_errored_and_expired_requests_retry_in_a_later_batch_then_go_dead(
        farm: Farm, db: Database, b: Batching) -> None:
    fine, errored, expired = (submit(farm, 1, "fine")[0],
                              submit(farm, 1, "[[sim:status=529]] busy")[0],
                              submit(farm, 1, "[[sim:batch_expire]] slow")[0])
    drive(b, [fine, errored, expired])
    found = jobs(db, [fine, errored, expired])
    assert (found[fine].status, found[errored].status, found[expired].status) == (
        "succeeded", "dead", "dead")
    made = attempt_rows(db, [errored, expired])
    assert sorted((str(a.job_id) == str(errored), a.attempt, a.outcome) for a in made) == [
        (False, 1, "expired"), (False, 2, "expired"),
        (True, 1, "overloaded"), (True, 2, "overloaded")]
    with db.connect() as conn:  # each attempt in a batch of its own
        spread = conn.execute("select job_id, count(distinct batch_id) from batch_items "
                              "where job_id = any(%(ids)s) group by job_id",
                              {"ids": [errored, expired]}).fetchall()
    assert sorted(n for _, n in spread) == [2, 2]
    assert {farm.dead_letter(j)["error_class"] for j in (errored, expired)} == {
        "overloaded", "expired"}


def test_a_job_cancelled_while_waiting_never_goes_into_a_batch(
        farm: Farm, db: Database, b: Batching) -> None:
    kept, dropped = submit(farm, 2)
    assert farm.cancel(dropped).value == "cancelled"  # at once: it had no call in flight
    drive(b, [kept])
    [batch] = batch_rows(db)
    assert batch.request_count == 1
    assert [(a.job_id, a.outcome) for a in attempt_rows(db, [kept, dropped])] == [
        (kept, "ok")]
    assert jobs(db, [dropped])[dropped].attempts == 0


def test_a_job_cancelled_in_flight_stays_cancelled_and_its_billed_result_is_kept(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    admin(sim, "/_sim/config", {"batch_processing_s": 1.0})
    ids = submit(farm, 3)
    loop.collect(b, Reconciler(b))
    assert farm.cancel(ids[0]).value == "cancelled"
    until(lambda: None if all(r.status != "running" for r in jobs(db, ids).values())
          else (loop.poll(b), "in flight")[1], 20)
    found = jobs(db, ids)
    assert [found[i].status for i in ids] == ["cancelled", "succeeded", "succeeded"]
    made = {a.job_id: a for a in attempt_rows(db, ids)}
    assert made[ids[0]].cost_usd > 0 and found[ids[0]].cost_usd == made[ids[0]].cost_usd
    assert Decimal(admin(sim, "/_sim/stats")["billed_batch_usd"]) == \
        sum(a.cost_usd for a in made.values())


def test_a_batch_whose_jobs_are_all_cancelled_is_cancelled_at_the_provider(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    admin(sim, "/_sim/config", {"batch_processing_s": 30.0})
    ids = submit(farm, 4)
    loop.collect(b, Reconciler(b))
    for job in ids:
        farm.cancel(job)
    until(lambda: None if batch_rows(db)[0].status == "done" else (loop.poll(b), "open")[1],
          20)
    assert {r.status for r in jobs(db, ids).values()} == {"cancelled"}
    assert [a.outcome for a in attempt_rows(db, ids)] == ["canceled"] * 4
    assert admin(sim, "/_sim/stats")["batches"]["canceled"] == 4
    assert not [d for d in farm.dead_letters() if d["job_id"] in ids]


def test_farm_batches_cancel_cancels_the_jobs_and_the_providers_batch(
        farm: Farm, db: Database, b: Batching, sim: str) -> None:
    from farm.batches import control

    admin(sim, "/_sim/config", {"batch_processing_s": 30.0})
    ids = submit(farm, 3)
    loop.collect(b, Reconciler(b))
    [row] = batch_rows(db)
    done = control.cancel(db, b.client, row.provider_id)
    assert (done.jobs, done.provider) == (3, "canceling")
    assert {r.status for r in jobs(db, ids).values()} == {"cancelled"}
    assert b.client.messages.batches.retrieve(row.provider_id).processing_status in (
        "canceling", "ended")
    assert control.cancel(db, b.client, str(row.id)).jobs == 0  # nothing left
    with pytest.raises(KeyError, match="no batch"):
        control.show(db, "msgbatch_nonesuch")
    until(lambda: None if batch_rows(db)[0].status == "done" else (loop.poll(b), "open")[1],
          20)
    assert {r.status for r in jobs(db, ids).values()} == {"cancelled"}


@pytest.fixture
def budget(db: Database) -> Iterator[Any]:
    from farm.store import budgets as budget_rows

    made: list[str] = []

    def add(**fields: Any) -> None:
        from farm.costs.budgets import Budget

        one = Budget.model_validate({"scope": "global", "period": "day", **fields})
        budget_rows.save(db, one)
        made.append(one.id)

    try:
        yield add
    finally:
        for budget_id in made:
            budget_rows.remove(db, budget_id)


def test_a_spent_budget_that_fails_its_jobs_stops_them_at_flush(
        farm: Farm, db: Database, b: Batching, budget: Any) -> None:
    budget(limit_usd="0.000001", on_exceed="fail")
    ids = submit(farm, 2)
    assert loop.collect(b, Reconciler(b)) == []
    assert {r.status for r in jobs(db, ids).values()} == {"dead"}
    assert {farm.dead_letter(j)["error_class"] for j in ids} == {"budget_exceeded"}
    assert attempt_rows(db, ids) == [] and batch_rows(db) == []


def test_a_budget_that_waits_keeps_the_jobs_waiting(farm: Farm, db: Database, b: Batching,
                                                    budget: Any) -> None:
    budget(limit_usd="0.000001", on_exceed="wait")
    ids = submit(farm, 2)
    assert loop.collect(b, Reconciler(b)) == []
    found = jobs(db, ids).values()
    assert {r.status for r in found} == {"queued"} and batch_rows(db) == []
    assert all(r.wait_reason.startswith("budget global:day:") and r.next_run_at for r in found)


def test_routing_steps_run_through_later_batches(settings: Settings, db: Database,
                                                 b: Batching) -> None:
    """A second opinion, then the job's own call; an escalation to the complex model; a
    refusal: each batch result moves its job as a synchronous answer would."""
    unsure = settings.model_copy(update={"router_second_opinion": (0.0, 1.0)})
    with Farm(unsure) as farm:
        opinion, moved = farm.submit_many([
            {"prompt": "Translate 'cat' into French.", "batch": True},
            {"prompt": "Design a database. [[sim:opinion=complex]]", "batch": True}])
        escalated, refused = submit(farm, 2, "[[sim:weak=refusal]] answer briefly")
        with db.begin() as conn:  # one asks for escalation, the other does not
            conn.execute("update jobs set request = request || '{\"escalate\": true}' "
                         "where id = %(id)s", {"id": escalated})
        ids = [opinion, moved, escalated, refused]
        drive(b, ids, timeout=60)
        found = jobs(db, ids)
        assert [found[i].status for i in ids] == ["succeeded", "succeeded", "succeeded",
                                                  "failed"]
        made = attempt_rows(db, ids)
        steps = {i: [(a.model, a.outcome) for a in made if a.job_id == i] for i in ids}
    sonnet = "claude-sonnet-5-5"
    assert steps == {
        opinion: [(HAIKU, "second_opinion"), (HAIKU, "ok")],
        moved: [(HAIKU, "second_opinion"), (sonnet, "ok")],
        escalated: [(HAIKU, "escalated"), (sonnet, "ok")],
        refused: [(HAIKU, "refusal")]}
    assert (found[moved].model, found[escalated].escalated_from) == (sonnet, HAIKU)
    assert farm_dead(b, refused) == "refusal"
    assert all(a.cost_usd > 0 for a in made)


def farm_dead(b: Batching, job_id: uuid.UUID) -> str | None:
    return dlq.error_class(b.db, job_id)


def test_a_far_deadline_or_the_queues_policy_batches_a_job(settings: Settings,
                                                           db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    from farm.settings import QueueSpec

    queues = (QueueSpec(name="haiku-simple", model=HAIKU, complexity="simple"),
              QueueSpec(name="bulk", model=HAIKU, complexity="simple", batch=True),
              QueueSpec(name="sonnet-complex", model="claude-sonnet-5-5", complexity="complex"))
    now = datetime.now(UTC)
    with Farm(settings.model_copy(update={"queues": queues})) as farm:
        ids = farm.submit_many([
            {"prompt": "p", "complexity": "simple", "deadline": now + timedelta(days=2)},
            {"prompt": "p", "complexity": "simple", "deadline": now + timedelta(hours=2)},
            {"prompt": "p", "queue": "bulk"},
            {"prompt": "p", "queue": "bulk", "batch": False},
            {"prompt": "p", "complexity": "simple", "deadline": now + timedelta(days=2),
             "batch": False}])
        found = jobs(db, ids)
    assert [found[i].batched for i in ids] == [True, False, True, False, False]


def test_the_jobs_of_a_paused_queue_stay_waiting_until_it_resumes(farm: Farm, db: Database,
                                                                  b: Batching) -> None:
    limiter: Any = b.runtime.gate.limiter
    limiter.pause_queue("haiku-simple")
    try:
        ids = submit(farm, 2)
        assert loop.collect(b, Reconciler(b)) == []
        assert {r.status for r in jobs(db, ids).values()} == {"queued"}
    finally:
        limiter.resume_queue("haiku-simple")
    drive(b, ids)
    assert [(a.attempt, a.outcome) for a in attempt_rows(db, ids)] == [(1, "ok")] * 2


def test_batch_spend_reaches_the_budgets_in_redis(farm: Farm, db: Database, b: Batching) -> None:
    budget, _ = farm.budgets.set(tenant="batchy", usd=100, soft=0.9)
    ledger: Any = b.runtime.gate.ledger
    try:
        def seeded() -> str | None:  # the workers' mirror of the budgets is read each second
            charge = ledger.charge("batchy", "haiku-simple", HAIKU, Decimal(0))
            if charge is None or not charge.covered:
                return "the budget is not mirrored yet"
            ledger.seed(charge, 0)
            return None

        until(seeded, 10)
        ids = submit(farm, 3, tenant="batchy")
        drive(b, ids)
        view = farm.budgets.view(budget)
        assert view.counted_in_redis and view.reserved_usd == 0
        assert view.spent_usd == sum(a.cost_usd for a in attempt_rows(db, ids)) > 0
    finally:
        farm.budgets.remove(budget.id)
