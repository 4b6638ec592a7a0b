"""The client and the store against a real Postgres and a real Redis broker (no workers)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy import text

from farm.broker.layout import queue_keys
from farm.client import Farm, InvalidJobError, JobFinishedError, SubmitError, WaitTimeoutError
from farm.jobs import JobRequest, JobStatus, new_job_id
from farm.routing.route import parse_and_route
from farm.settings import DEFAULT_QUEUES, Settings
from farm.store import jobs as store
from farm.store.db import Database


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: object) -> Iterator[Farm]:
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    client.close()
    settings = Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path)
    with Farm(settings) as f:
        yield f


def _queued_messages(broker_url: str) -> dict[str, list[dict[str, object]]]:
    client = redis.Redis.from_url(broker_url)
    out: dict[str, list[dict[str, object]]] = {}
    try:
        for key in client.keys("*"):
            name = key.decode()
            if client.type(key) == b"list":
                out[name] = [json.loads(m) for m in client.lrange(key, 0, -1)]
    finally:
        client.close()
    return out


def test_submit_records_row_then_publishes_to_the_routed_queue(farm: Farm, broker_url: str) -> None:
    simple = farm.submit(prompt="What is the capital of France?", tenant="t1")
    complex_ = farm.submit(JobRequest(prompt="x", complexity="complex", priority="high"))
    views = {v.id: v for v in farm.statuses([simple, complex_])}
    assert views[simple].status is JobStatus.QUEUED
    assert views[simple].queue == "haiku-simple"
    assert views[simple].model == "claude-haiku-4-5"
    assert views[simple].tenant == "t1"
    assert views[complex_].queue == "sonnet-complex"
    messages = _queued_messages(broker_url)
    haiku = [k for k in messages if k.startswith("haiku-simple")]
    sonnet = [k for k in messages if k.startswith("sonnet-complex")]
    assert haiku and sonnet
    body = messages[haiku[0]][0]
    assert body["headers"]["id"] == str(simple)  # type: ignore[index]
    # only the job id travels: no prompt in the message or its repr
    raw = json.dumps(messages)
    assert "capital of France" not in raw


def test_invalid_batch_enqueues_nothing(farm: Farm, broker_url: str, database_url: str) -> None:
    with farm.engine.connect() as conn:
        before = conn.execute(text("select count(*) from jobs")).scalar()
    with pytest.raises(InvalidJobError) as info:
        farm.submit_many([{"prompt": "fine"}, {"prompt": "x", "max_tokens": -1}])
    assert info.value.problems[0][:2] == (1, "max_tokens")
    with farm.engine.connect() as conn:
        assert conn.execute(text("select count(*) from jobs")).scalar() == before
    assert _queued_messages(broker_url) == {}


def test_cancel_queued_job(farm: Farm) -> None:
    job = farm.submit(prompt="hello")
    assert farm.cancel(job) is JobStatus.CANCELLED
    assert farm.status(job).status is JobStatus.CANCELLED
    # cancelling again is harmless and reports the state
    assert farm.cancel(job) is JobStatus.CANCELLED
    with pytest.raises(KeyError):
        farm.cancel(uuid.uuid4())


def test_wait_times_out_with_a_count(farm: Farm) -> None:
    job = farm.submit(prompt="hello")
    with pytest.raises(TimeoutError, match="1 of 1"):
        farm.wait([job], timeout=0.3, poll_s=0.1)


def test_indexes_serve_the_report_queries(farm: Farm) -> None:
    with farm.engine.connect() as conn:
        names = set(conn.execute(text("select indexname from pg_indexes")).scalars())
    assert {"ix_jobs_created_at", "ix_jobs_active", "pk_attempts",
            "ix_attempts_started_at"} <= names


def test_wait_counts_a_job_without_a_row_as_pending(farm: Farm) -> None:
    # e.g. a job sent inline with send_task whose row a worker has not written yet
    with pytest.raises(TimeoutError, match="1 of 1"):
        farm.wait([uuid.uuid4()], timeout=0.3, poll_s=0.1)


def test_a_failing_statement_does_not_carry_its_parameters(db: Database) -> None:
    # an error (logged, shown in Flower) says what Postgres said, never the request and its
    # prompt
    request, route = parse_and_route({"prompt": "PARAM-SECRET-prompt", "system": "PARAM-SYS"},
                                     DEFAULT_QUEUES)
    row = store.new_job_row(new_job_id(), request, route)
    with db.begin() as conn:
        store.insert_jobs(conn, [row])
    with pytest.raises(psycopg.IntegrityError) as failed, db.begin() as conn:
        store.insert_jobs(conn, [row])  # the same id again: a duplicate key
    message = str(failed.value)
    assert "duplicate key" in message
    assert "PARAM-SECRET" not in message and "PARAM-SYS" not in message


def test_unknown_ids_have_neither_a_row_nor_a_message(farm: Farm, broker_url: str) -> None:
    submitted = farm.submit(prompt="hello")
    # inline jobs: no row until a worker takes them; one waits in its queue's list, one is
    # held by a consumer that took it and has not acknowledged it (kombu's unacked hash)
    in_list = farm.app.send_task("farm.run_job", kwargs={"request": {"prompt": "inline"}})
    held = farm.app.send_task("farm.run_job", kwargs={"request": {"prompt": "held"}},
                              queue="farm-intake")
    nothing = uuid.uuid4()
    assert farm.statuses([in_list.id, held.id]) == []
    with farm.app.connection_for_read() as conn:
        message = conn.SimpleQueue("farm-intake").get(timeout=5)
        assert message.headers["id"] == held.id
        client = redis.Redis.from_url(broker_url)
        try:  # it is held, not queued
            assert client.hlen("unacked") == 1
            assert sum(client.llen(key) for key in queue_keys("farm-intake")) == 0
        finally:
            client.close()
        assert farm.unknown([submitted, in_list.id, held.id, nothing], recheck_s=0) == [
            nothing]
    assert farm.unknown([submitted], recheck_s=0) == []


def test_a_wait_that_times_out_lists_the_jobs_not_finished(farm: Farm) -> None:
    first, second = farm.submit(prompt="one"), farm.submit(prompt="two")
    farm.cancel(first)
    with pytest.raises(WaitTimeoutError, match="1 of 2") as info:
        farm.wait([first, second], timeout=0.2, poll_s=0.1)
    assert info.value.pending == [second]


def test_jobs_are_listed_newest_first_and_filtered(farm: Farm) -> None:
    tenant = f"list-{uuid.uuid4().hex[:8]}"
    first = farm.submit(prompt="one", tenant=tenant)
    second = farm.submit(prompt="two", tenant=tenant, queue="sonnet-complex")
    third = farm.submit(prompt="three", tenant=tenant)
    farm.cancel(third)
    assert [v.id for v in farm.jobs(tenant=tenant)] == [third, second, first]
    assert [v.id for v in farm.jobs(tenant=tenant, limit=2)] == [third, second]
    assert [v.id for v in farm.jobs(tenant=tenant, status=["cancelled"])] == [third]
    assert [v.id for v in farm.jobs(tenant=tenant, status=[JobStatus.QUEUED, "cancelled"],
                                    queue="haiku-simple")] == [third, first]
    created = farm.status(second).created_at
    assert [v.id for v in farm.jobs(tenant=tenant, since=created)] == [third, second]
    assert farm.jobs(tenant="nobody-has-this-tenant") == []


def test_a_strict_cancel_of_a_finished_job_raises(farm: Farm) -> None:
    job = farm.submit(prompt="hello")
    assert farm.cancel(job, strict=True) is JobStatus.CANCELLED
    with pytest.raises(JobFinishedError, match="already finished \\(cancelled\\)") as info:
        farm.cancel(job, strict=True)
    assert info.value.status is JobStatus.CANCELLED


def test_a_chunk_is_published_in_one_round_trip_in_order(
        farm: Farm, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    executed: list[int] = []
    execute = redis.client.Pipeline.execute

    def counted(self: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        executed.append(len(self.command_stack))
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counted)
    ids = farm.submit_many([{"prompt": f"What is {i} + {i}?", "complexity": "simple"}
                            for i in range(250)])
    assert executed == [100, 100, 50]  # a pipeline of LPUSHes per chunk of SUBMIT_CHUNK
    [key] = [k for k in _queued_messages(broker_url) if k.startswith("haiku-simple")]
    popped = _queued_messages(broker_url)[key][::-1]  # a worker pops from the right
    assert [m["headers"]["id"] for m in popped] == [str(i) for i in ids]  # type: ignore[index]


def test_a_failed_chunk_fails_its_jobs_but_one_a_worker_took(
        farm: Farm, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = farm.submit_many([{"prompt": "before", "complexity": "simple"}])
    tag = uuid.uuid4().hex
    execute = redis.client.Pipeline.execute

    def cut(self: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        if len(self.command_stack) < 3:
            return execute(self, *args, **kwargs)
        execute(self, *args, **kwargs)  # the messages arrive, the answer does not
        with farm.db.begin() as conn:  # and a worker has taken the second job already
            conn.execute("UPDATE jobs SET status = 'running' "
                         "WHERE request->>'prompt' = %(p)s", {"p": f"{tag} 1"})
        raise redis.ConnectionError("connection lost")

    monkeypatch.setattr(redis.client.Pipeline, "execute", cut)
    with pytest.raises(SubmitError) as info:
        farm.submit_many([{"prompt": f"{tag} {i}", "complexity": "simple"} for i in range(3)])
    with farm.db.connect() as conn:
        found = {p: (i, s, e) for p, i, s, e in conn.execute(
            "SELECT request->>'prompt', id, status, error FROM jobs "
            "WHERE request->>'prompt' LIKE %(t)s", {"t": f"{tag} %"}).fetchall()}
    assert found[f"{tag} 1"][1] == "running"  # its message arrived: it is not failed
    assert info.value.failed == [found[f"{tag} 0"][0], found[f"{tag} 2"][0]]
    assert info.value.published == 1
    for prompt in (f"{tag} 0", f"{tag} 2"):
        assert found[prompt][1] == "failed"
        assert found[prompt][2] == "publish failed: ConnectionError: connection lost"
    assert farm.status(first[0]).status is JobStatus.QUEUED
