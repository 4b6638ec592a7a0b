"""Memoization against real Postgres and Redis: the lookup (newest answer of the tenant
within the TTL, succeeded originals only, through the partial index), a hit recorded, the
in-flight mark (one holder, waiters bounded by FARM_MEMO_WAIT_S, a crashed holder's mark
expiring), and the memo step of a delivery (farm.memo.run) on two identical jobs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from celeryconfig import farm_retry_policies
from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.jobs import JobStatus, Usage
from farm.memo import run as memo_run
from farm.memo import store as memo_store
from farm.memo.inflight import Claimed, InFlight, mark_key
from farm.provider.messages import CallResult
from farm.reliability.leases import Running
from farm.routing.escalation import as_sent
from farm.settings import Settings
from farm.store import attempts
from farm.store import jobs as store
from farm.store.db import scalars
from farm.worker import runtime as rt

KEY = "k" * 64


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    with Farm(Settings(broker_url=broker_url, database_url=database_url,
                       data_dir=tmp_path)) as f:
        yield f


def row(farm: Farm, job: uuid.UUID) -> Any:
    with farm.db.connect() as conn:
        found = conn.execute("select * from jobs where id = %(id)s", {"id": job}).fetchone()
    assert found is not None
    return found


def sql(farm: Farm, statement: str, **params: Any) -> None:
    with farm.db.begin() as conn:
        conn.execute(statement, params)


def answered(status: JobStatus, cost: str, answer: str) -> attempts.Outcome:
    return attempts.Outcome(
        status=status, model="claude-haiku-4-5", outcome="ok", started_at=datetime.now(UTC),
        latency_s=0.5, usage=Usage(input_tokens=10, output_tokens=5), cost=Decimal(cost),
        http_status=200, response_text=answer, stop_reason="end_turn")


def original(farm: Farm, *, tenant: str = "acme", cost: str = "0.01", age_s: float = 0,
             status: JobStatus = JobStatus.SUCCEEDED, key: str = KEY) -> uuid.UUID:
    """A job of ``tenant`` that ended ``status`` from its own call ``age_s`` ago, keyed."""
    job_id = farm.submit(prompt=f"original {uuid.uuid4()}", tenant=tenant, memo=True,
                         complexity="simple")
    job = store.start_job(farm.db, job_id)
    assert job is not None
    attempts.record(farm.db, job, answered(status, cost, f"answer of {job_id}"))
    sql(farm, "update jobs set memo_key = %(k)s, "
        "finished_at = now() - make_interval(secs => %(a)s) where id = %(id)s",
        k=key, a=age_s, id=job_id)
    return job_id


def test_the_lookup_finds_the_newest_answer_of_the_tenant_within_the_ttl(farm: Farm) -> None:
    old = original(farm, cost="0.01", age_s=100)
    new = original(farm, cost="0.02", age_s=10)
    found = memo_store.lookup(farm.db, "acme", KEY, 1_000)
    assert found is not None and found.id == new
    assert found.cost_usd == Decimal("0.02") and found.response_text == f"answer of {new}"
    assert found.served_model == "claude-haiku-4-5" and found.stop_reason == "end_turn"
    assert memo_store.lookup(farm.db, "acme", KEY, 60).id == new  # type: ignore[union-attr]
    assert memo_store.lookup(farm.db, "acme", KEY, 5) is None  # both too old
    sql(farm, "update jobs set finished_at = now() - interval '200 seconds' where id = %(id)s",
        id=new)
    assert memo_store.lookup(farm.db, "acme", KEY, 150).id == old  # type: ignore[union-attr]
    # another tenant's identical job, another key: nothing
    assert memo_store.lookup(farm.db, "other", KEY, 1_000) is None
    assert memo_store.lookup(farm.db, "acme", "j" * 64, 1_000) is None
    original(farm, tenant="other", key="o" * 64)
    assert memo_store.lookup(farm.db, "acme", "o" * 64, 1_000) is None
    assert memo_store.lookup(farm.db, "other", "o" * 64, 1_000) is not None


def test_only_answers_that_succeeded_from_their_own_call_serve(farm: Farm) -> None:
    failed = original(farm, status=JobStatus.FAILED, key="f" * 64)
    assert memo_store.lookup(farm.db, "acme", "f" * 64, 1_000) is None
    sql(farm, "update jobs set memo_key = null where id = %(id)s", id=failed)
    assert not memo_store.remember(farm.db, failed, "f" * 64)  # a failed job: no key
    assert row(farm, failed).memo_key is None
    hit = original(farm, key="h" * 64)
    sql(farm, "update jobs set cache_hit = true where id = %(id)s", id=hit)
    assert memo_store.lookup(farm.db, "acme", "h" * 64, 1_000) is None
    assert not memo_store.remember(farm.db, hit, "x" * 64)  # nor on a hit


def test_a_hit_ends_the_job_succeeded_with_the_answer_cost_0_and_the_saving(
        farm: Farm) -> None:
    first = original(farm, cost="0.0123")
    found = memo_store.lookup(farm.db, "acme", KEY, 1_000)
    assert found is not None
    job_id = farm.submit(prompt="the same", tenant="acme", memo=True, complexity="simple")
    job = store.start_job(farm.db, job_id)
    assert job is not None and job.attempt == 1
    assert memo_store.record_hit(farm.db, job, KEY, found)
    got = row(farm, job_id)
    assert (got.status, got.cache_hit, got.saved_usd, got.cost_usd) == (
        "succeeded", True, Decimal("0.0123"), Decimal(0))
    assert (got.response_text, got.served_model, got.stop_reason) == (
        f"answer of {first}", "claude-haiku-4-5", "end_turn")
    assert (got.attempts, got.input_tokens, got.output_tokens, got.memo_key) == (0, 0, 0, KEY)
    assert got.finished_at is not None and got.lease_until is None and got.error is None
    view = farm.status(job_id)
    assert view.cache_hit and view.saved_usd == Decimal("0.0123") and view.done
    assert not memo_store.record_hit(farm.db, job, KEY, found)  # ended already
    # the hit serves nobody: the original does
    assert memo_store.lookup(farm.db, "acme", KEY, 1_000).id == first  # type: ignore[union-attr]
    # a job cancelled meanwhile is not ended as a hit
    late = farm.submit(prompt="the same", tenant="acme", memo=True, complexity="simple")
    late_job = store.start_job(farm.db, late)
    assert late_job is not None
    farm.cancel(late)
    assert not memo_store.record_hit(farm.db, late_job, KEY, found)
    assert row(farm, late).status == "cancelled" and not row(farm, late).cache_hit


def test_the_lookup_is_served_by_the_partial_index(farm: Farm) -> None:
    original(farm)
    # the planner setting is rolled back with the transaction: the pooled connection is clean
    with farm.db.connect() as conn, conn.transaction(force_rollback=True):
        conn.execute("set enable_seqscan = off")
        plan = "\n".join(scalars(conn.execute("explain " + memo_store.LOOKUP_SQL,
                                               {"tenant": "acme", "key": KEY, "ttl_s": 60})))
    assert "ix_jobs_memo" in plan, plan


def until(what: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := what():
            return got
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_one_holder_the_others_wait_and_only_the_holder_releases(client: redis.Redis) -> None:
    marks = InFlight(client, wait_s=30)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert marks.claim("acme", KEY, a).claimed is Claimed.HOLD
    assert 0 < client.pttl(mark_key("acme", KEY)) <= 30_000  # a crashed holder's mark goes
    assert marks.claim("acme", KEY, b).claimed is Claimed.WAIT
    assert marks.claim("acme", KEY, c).claimed is Claimed.WAIT
    assert marks.claim("acme", KEY, a).claimed is Claimed.HOLD  # a redelivery of the holder
    # per tenant: the same key of another tenant is another mark
    assert marks.claim("other", KEY, uuid.uuid4()).claimed is Claimed.HOLD
    marks.release("acme", KEY, b)  # not b's mark: nothing
    assert marks.claim("acme", KEY, c).claimed is Claimed.WAIT
    marks.release("acme", KEY, a)
    # the holder went (without an answer to reuse: the memo step looks first): the jobs
    # that waited call at once, in parallel, none of them holding the mark …
    assert marks.claim("acme", KEY, c).claimed is Claimed.CALL
    assert marks.claim("acme", KEY, b).claimed is Claimed.CALL
    # … which a new job takes
    d = uuid.uuid4()
    assert marks.claim("acme", KEY, d).claimed is Claimed.HOLD
    assert marks.claim("acme", KEY, b).claimed is Claimed.WAIT


def test_a_waiter_calls_itself_once_it_has_waited_the_limit(client: redis.Redis) -> None:
    marks = InFlight(client, wait_s=0.3)
    holder, waiter = uuid.uuid4(), uuid.uuid4()
    began = time.monotonic()
    assert marks.claim("acme", KEY, holder).claimed is Claimed.HOLD
    first = marks.claim("acme", KEY, waiter)
    assert first.claimed is Claimed.WAIT and first.waited_s < 0.3

    def told_to_call() -> float | None:
        marks.claim("acme", KEY, holder)  # the holder is alive: its mark stays
        claim = marks.claim("acme", KEY, waiter)
        return claim.waited_s if claim.claimed is Claimed.CALL else None

    waited = until(told_to_call)
    assert waited >= 0.3 and time.monotonic() - began >= 0.3
    # its wait is over: should it come back, it starts a new one
    assert marks.claim("acme", KEY, waiter).claimed is Claimed.WAIT


def test_a_crashed_holders_mark_expires(client: redis.Redis) -> None:
    marks = InFlight(client, wait_s=0.2)
    assert marks.claim("acme", KEY, uuid.uuid4()).claimed is Claimed.HOLD
    late = uuid.uuid4()
    assert marks.claim("acme", KEY, late).claimed is Claimed.WAIT
    until(lambda: client.exists(mark_key("acme", KEY)) == 0)
    assert marks.claim("acme", KEY, late).claimed is Claimed.CALL  # it waited: no more
    assert marks.claim("acme", KEY, uuid.uuid4()).claimed is Claimed.HOLD


def test_the_memo_step_of_two_identical_jobs(farm: Farm, client: redis.Redis,
                                            tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, memo_wait_s=60)
    runtime = rt.Runtime(settings=settings, db=farm.db, client=None,  # type: ignore[arg-type]
                         prices=default_pricebook(), policies=farm_retry_policies,
                         running=Running(), stop=threading.Event(), hold=None,  # type: ignore[arg-type]
                         gate=None, inflight=InFlight(client, wait_s=60))  # type: ignore[arg-type]
    job = {"prompt": "What is 6 x 7?", "tenant": "acme", "memo": True, "complexity": "simple"}
    a, b = farm.submit_many([job, job])
    plain, warmer = farm.submit_many([{**job, "memo": False}, {**job, "temperature": 0.5}])

    def started(job_id: uuid.UUID) -> store.StartedJob:
        got = store.start_job(farm.db, job_id)
        assert got is not None
        return got.__class__(**{**got.__dict__, "request": as_sent(got.request)})

    first = started(a)
    memo = memo_run.check(runtime, first)
    assert isinstance(memo, memo_run.Memo) and memo.holds and memo.model == first.model
    second = started(b)
    wait = memo_run.check(runtime, second)
    assert isinstance(wait, memo_run.Wait) and 0 < wait.countdown <= 5
    waiting = row(farm, b)
    assert (waiting.status, waiting.attempts, waiting.wait_reason) == (
        "queued", 0, memo_run.WAITING)
    assert memo_run.check(runtime, started(plain)) is None  # memo=False: no step at all
    other = memo_run.check(runtime, started(warmer))  # another temperature: another key
    assert isinstance(other, memo_run.Memo) and other.holds and other.key != memo.key
    # the first call's answer is recorded, keyed, and the mark released
    attempts.record(farm.db, first, answered(JobStatus.SUCCEEDED, "0.0042", "42"))
    memo_run.remember(runtime, memo, first, model=first.model, status=JobStatus.SUCCEEDED,
                      result=CallResult(text="42", stop_reason="end_turn", usage=Usage(),
                                        model=first.model, request_id=None, latency_s=0.5))
    assert row(farm, a).memo_key == memo.key
    memo_run.release(runtime, memo)
    assert client.exists(mark_key("acme", memo.key)) == 0
    hit = memo_run.check(runtime, started(b))
    assert isinstance(hit, memo_run.Hit) and hit.recorded and hit.original.id == a
    assert hit.result(b) == {"job_id": str(b), "status": "succeeded", "cost_usd": "0",
                             "cache_hit": True, "saved_usd": "0.0042000000",
                             "memo_of": str(a)}
    served = row(farm, b)
    assert (served.status, served.cache_hit, served.response_text, served.saved_usd) == (
        "succeeded", True, "42", Decimal("0.0042"))


def test_an_answer_of_the_fallback_model_gets_no_key(farm: Farm, client: redis.Redis,
                                                     tmp_path: Path) -> None:
    runtime = rt.Runtime(settings=Settings(data_dir=tmp_path), db=farm.db,
                         client=None, prices=default_pricebook(),  # type: ignore[arg-type]
                         policies=farm_retry_policies, running=Running(),
                         stop=threading.Event(), hold=None, gate=None,  # type: ignore[arg-type]
                         inflight=InFlight(client, wait_s=60))
    job_id = farm.submit(prompt="Hello?", tenant="acme", memo=True, complexity="complex")
    job = store.start_job(farm.db, job_id)
    assert job is not None
    memo = memo_run.check(runtime, job)
    assert isinstance(memo, memo_run.Memo)
    attempts.record(farm.db, job, answered(JobStatus.SUCCEEDED, "0.001", "hi"))
    memo_run.remember(runtime, memo, job, model="claude-haiku-4-5", status=JobStatus.SUCCEEDED,
                      result=CallResult(text="hi", stop_reason="end_turn", usage=Usage(),
                                        model="claude-haiku-4-5", request_id=None,
                                        latency_s=0.5))
    assert row(farm, job_id).memo_key is None
    memo_run.release(runtime, memo)
