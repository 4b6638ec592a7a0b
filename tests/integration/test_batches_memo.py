"""Memoization of batch jobs in real Postgres and Redis against the simulator's batch API
(in this process, driven by the official SDK): a batch answer that may serve gets its memo
key, and later identical jobs, batched or synchronous, are answered from it (at flush, for a
batch job: never sent); identical jobs in one flush, or while one is in a batch in flight,
make one request; the others wait, and are sent later when that answer may not serve."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tests_batches import admin, batching, in_process_sim, until

from farm.batches import loop, memo
from farm.batches.context import Batching
from farm.batches.reconcile import Reconciler
from farm.client import Farm
from farm.jobs import JobRequest
from farm.memo import run as memo_run
from farm.memo.key import memo_key_of
from farm.provider.body import wire_body
from farm.routing.escalation import as_sent
from farm.settings import Settings
from farm.store import jobs as job_store
from farm.store.db import Database, scalar, scalars
from farm.worker import events, reroute

HAIKU = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with in_process_sim(batch_processing_s=0.2) as url:
        yield url


@pytest.fixture
def settings(broker_url: str, database_url: str, sim: str, tmp_path: Path) -> Settings:
    admin(sim, "/_sim/reset", {})
    admin(sim, "/_sim/config", {"batch_processing_s": 0.2})
    return Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path,
                    anthropic_api_key="sk-test-batches", anthropic_base_url=sim,
                    batch_max_age_s=0, batch_poll_s=0.1, batch_poll_max_s=0.3)


@pytest.fixture
def farm(settings: Settings) -> Iterator[Farm]:
    with Farm(settings) as f:
        yield f


@pytest.fixture
def b(settings: Settings) -> Iterator[Batching]:
    with batching(settings) as made:
        yield made


@pytest.fixture
def tenant() -> str:
    """A tenant of the test's own: memoized answers of other tests never serve it."""
    return f"memo-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def heard() -> Iterator[list[dict[str, Any]]]:
    """The memo_hit and job_finished signals sent meanwhile."""
    got: list[dict[str, Any]] = []

    def listen(signal: Any, **kw: Any) -> None:
        got.append({"signal": signal.name, **kw})

    for signal in (events.memo_hit, events.job_finished):
        signal.connect(listen, weak=False, dispatch_uid=f"test.memo.{signal.name}")
    try:
        yield got
    finally:
        for signal in (events.memo_hit, events.job_finished):
            signal.disconnect(listen, dispatch_uid=f"test.memo.{signal.name}")


def job(tenant: str, prompt: str = "What does a memo save?", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, "tenant": tenant, "complexity": "simple", "batch": True,
            "memo": True, **fields}


def jobs(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    with db.connect() as conn:
        found = conn.execute("select * from jobs where id = any(%(ids)s)", {"ids": ids})
        return {row.id: row for row in found}


def items(db: Database, ids: list[uuid.UUID]) -> list[Any]:
    with db.connect() as conn:
        return conn.execute("select * from batch_items where job_id = any(%(ids)s)",
                            {"ids": ids}).fetchall()


def attempt_count(db: Database, ids: list[uuid.UUID]) -> int:
    with db.connect() as conn:
        return int(scalar(conn.execute(
            "select count(*) from attempts where job_id = any(%(ids)s)", {"ids": ids})))


def drive(b: Batching, ids: list[uuid.UUID], timeout: float = 30) -> None:
    """Run the batch loop's rounds (collector, poller) until every job is finished."""
    reconciler = Reconciler(b)

    def left() -> str | None:
        loop.collect(b, reconciler)
        loop.poll(b)
        busy = [r.status for r in jobs(b.db, ids).values() if r.status in ("queued", "running")]
        return f"{len(busy)} job(s) unfinished" if busy else None

    until(left, timeout)


def batch_stats(sim: str) -> dict[str, int]:
    stats: dict[str, int] = admin(sim, "/_sim/stats")["batches"]
    return stats


def key_of(fields: dict[str, Any]) -> str:
    """The memo key a synchronous call of the job would have (farm.memo.run)."""
    return memo_key_of(wire_body(HAIKU, as_sent(JobRequest.model_validate(fields))))


def test_a_batch_answer_is_memoized_and_later_identical_jobs_are_hits_at_flush(
        farm: Farm, db: Database, b: Batching, sim: str, tenant: str,
        heard: list[dict[str, Any]]) -> None:
    [first] = farm.submit_many([job(tenant)])
    drive(b, [first])
    original = jobs(db, [first])[first]
    key = key_of(job(tenant))
    assert (original.status, original.cache_hit, original.memo_key) == ("succeeded", False, key)
    assert original.cost_usd > 0 and [i.memo_key for i in items(db, [first])] == [key]
    # identical jobs: hits at flush, never sent; one with a TTL the answer is past, one that
    # does not memoize and one of another tenant are sent
    with db.begin() as conn:
        conn.execute("update jobs set finished_at = now() - interval '30 seconds' "
                     "where id = %(id)s", {"id": first})
    hits = farm.submit_many([job(tenant), job(tenant)])
    sent = farm.submit_many([job(tenant, memo_ttl_s=10), job(tenant, memo=False),
                             job(f"{tenant}-other")])
    heard.clear()
    drive(b, hits + sent)
    found = jobs(db, hits + sent)
    for hit in hits:
        row = found[hit]
        assert (row.status, row.cache_hit, row.cost_usd, row.saved_usd, row.attempts) == (
            "succeeded", True, Decimal(0), original.cost_usd, 0)
        assert (row.response_text, row.served_model, row.memo_key) == (
            original.response_text, original.served_model, key)
        assert row.started_at is not None and row.wait_reason is None
    assert attempt_count(db, hits) == 0 and items(db, hits) == []
    assert [(found[s].status, found[s].cache_hit, found[s].memo_key) for s in sent] == [
        ("succeeded", False, key), ("succeeded", False, None), ("succeeded", False, key)]
    assert batch_stats(sim)["requests"] == 1 + 3
    assert [(h["queue"], h["model"], h["saved"]) for h in heard
            if h["signal"] == "farm.memo_hit"] == [("haiku-simple", HAIKU, original.cost_usd)] * 2
    assert sorted(h["outcome"] for h in heard if h["signal"] == "farm.job_finished") == [
        "succeeded"] * 5
    # a synchronous identical job is answered from the newest batch answer
    sync = farm.submit(**{**job(tenant), "batch": False})
    started = job_store.start_job(b.db, sync)
    assert started is not None
    hit = memo_run.check(b.runtime, reroute.call_job(started, False))
    assert isinstance(hit, memo_run.Hit) and hit.recorded and hit.original.id == sent[0]


def test_identical_jobs_make_one_request_the_others_wait_then_are_hits(
        farm: Farm, db: Database, b: Batching, sim: str, tenant: str) -> None:
    ids = farm.submit_many([job(tenant)] * 3)
    other = farm.submit_many([job(f"{tenant}-other"), job(tenant, memo=False)])
    reconciler = Reconciler(b)
    assert len(loop.collect(b, reconciler)) == 1
    [first] = [i.job_id for i in items(db, ids)]  # the first of the flush's order
    assert {i.job_id for i in items(db, other)} == set(other)
    rest = [i for i in ids if i != first]
    assert {(r.status, r.attempts, r.wait_reason) for r in jobs(db, rest).values()} == {
        ("queued", 0, memo.WAITING)}
    # while the first is in a batch in flight, they are due but not sent
    assert loop.collect(b, reconciler) == []
    assert {r.status for r in jobs(db, rest).values()} == {"queued"}
    drive(b, ids + other)
    found = jobs(db, ids)
    assert (found[first].status, found[first].cache_hit) == ("succeeded", False)
    assert [(found[i].status, found[i].cache_hit, found[i].response_text) for i in rest] == [
        ("succeeded", True, found[first].response_text)] * 2
    assert batch_stats(sim)["requests"] == 3 and batch_stats(sim)["created"] == 1


def test_an_answer_that_may_not_serve_is_not_memoized_and_the_next_job_is_sent(
        farm: Farm, db: Database, b: Batching, sim: str, tenant: str) -> None:
    """On a simple queue, an answer cut at a short max_tokens stands only because the job
    would not escalate: it gets no key, and the identical job that waited is sent."""
    cut = job(tenant, "[[sim:tokens=200]] Describe Jupiter.", max_tokens=64)
    ids = farm.submit_many([cut, cut])
    assert len(loop.collect(b, Reconciler(b))) == 1
    assert len(items(db, ids)) == 1  # the other waits
    drive(b, ids)
    found = jobs(db, ids)
    assert [(found[i].status, found[i].stop_reason, found[i].cache_hit, found[i].memo_key)
            for i in ids] == [("succeeded", "max_tokens", False, None)] * 2
    assert [i.memo_key for i in items(db, ids)] == [key_of(cut)] * 2
    assert batch_stats(sim)["requests"] == 2 and batch_stats(sim)["created"] == 2


def test_many_lookups_in_one_statement_each_by_its_tenant_and_ttl(
        farm: Farm, db: Database, tenant: str) -> None:
    from farm.memo import store as memo_store

    key, other_key = "a" * 64, "b" * 64
    answered = farm.submit(prompt="an answer", tenant=tenant, memo=True)
    with db.begin() as conn:
        conn.execute("update jobs set status = 'succeeded', memo_key = %(k)s, cost_usd = 0.01, "
                     "response_text = 'it', finished_at = now() - interval '100 seconds' "
                     "where id = %(id)s", {"k": key, "id": answered})
    # the planner setting is rolled back with the transaction: the pooled connection is clean
    with db.connect() as conn, conn.transaction(force_rollback=True):
        found = memo_store.lookup_many(conn, [
            (tenant, key, 1000), (tenant, key, 10), (f"{tenant}-other", key, 1000),
            (tenant, other_key, 1000), (tenant, key, 1000)])
        assert [None if f is None else (f.id, f.response_text, f.cost_usd) for f in found] == [
            (answered, "it", Decimal("0.01")), None, None, None,
            (answered, "it", Decimal("0.01"))]
        assert memo_store.lookup_many(conn, []) == []
        conn.execute("set enable_seqscan = off")
        plan = "\n".join(scalars(conn.execute("explain " + memo_store.LOOKUP_MANY_SQL, {
            "tenants": [tenant], "keys": [key], "ttls": [60.0]})))
    assert "ix_jobs_memo" in plan, plan


def test_a_key_is_in_flight_while_its_job_is_on_the_batch_or_its_results_are_recorded(
        farm: Farm, db: Database, b: Batching, tenant: str) -> None:
    from farm.batches import store

    ids = farm.submit_many([job(tenant)])
    assert len(loop.collect(b, Reconciler(b))) == 1
    [item] = items(db, ids)
    key = key_of(job(tenant))

    def flying(status: str | None = None) -> set[tuple[str, str]]:
        with b.db.connect() as conn:
            if status is not None:
                conn.execute("update batches set status = %(s)s where id = %(id)s",
                             {"s": status, "id": item.batch_id})
            return store.keys_in_flight(conn, {(tenant, key), (tenant, "x" * 64),
                                               (f"{tenant}-other", key)})

    assert flying() == {(tenant, key)}
    farm.cancel(ids[0])  # nobody waits for a cancelled job's answer
    assert flying() == set()
    # ended: its results are being recorded, an answer may be a moment from its key: in
    # flight until the batch is done, whatever its job's status
    assert flying("ended") == {(tenant, key)}
    assert flying("done") == set()
