"""Idempotent submit against a real Postgres and a real Redis (no workers): one key of a
tenant is one job and one message, whatever races for it and from whichever client (the
Python API, `farm submit`, a plain send_task's intake); a different request under a held
key is refused naming the key and the job holding it."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, Task
from click.testing import CliRunner

from celeryconfig import farm_retry_policies
from farm import client as client_module
from farm.app import create_app
from farm.cli.main import main
from farm.client import Farm, InvalidJobError, SubmitError
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, JobStatus
from farm.reliability import dlq
from farm.reliability.idempotency import IdempotencyConflictError
from farm.reliability.leases import Running
from farm.routing.route import parse_and_route
from farm.settings import Settings
from farm.store import jobs as store
from farm.store import keyed
from farm.store.db import Database, dicts, scalar
from farm.worker import intake as intake_module
from farm.worker import runtime as rt
from farm.worker import tasks
from farm.worker.outcome import JobFailed

PROMPT = "IDEMPOTENCY-SECRET-PROMPT: what is 2 + 2?"


def _key() -> str:
    return f"key-{uuid.uuid4()}"  # tests share the session's database


def _settings(broker_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path)


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    client.close()
    with Farm(_settings(broker_url, database_url, tmp_path)) as f:
        yield f


def messages(broker_url: str) -> Counter[str]:
    """How many messages each job id has in the broker's lists."""
    client = redis.Redis.from_url(broker_url)
    found: Counter[str] = Counter()
    try:
        for key in client.keys("*"):
            if client.type(key) == b"list":
                for raw in client.lrange(key, 0, -1):
                    found[json.loads(raw)["headers"]["id"]] += 1
    finally:
        client.close()
    return found


def rows(db: Database, key: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return dicts(conn, "SELECT id, tenant, status, error, request_hash FROM jobs "
                           "WHERE idempotency_key = %(k)s ORDER BY tenant", {"k": key})


def test_clients_racing_for_one_key_get_one_job_and_one_message(
        broker_url: str, database_url: str, db: Database, tmp_path: Path) -> None:
    first, second = _key(), _key()
    jobs = {first: {"prompt": PROMPT, "idempotency_key": first},
            second: {"prompt": "another job", "idempotency_key": second, "priority": "high"}}
    racers = 6
    clients = [Farm(_settings(broker_url, database_url, tmp_path)) for _ in range(racers)]
    start = threading.Barrier(racers)
    got: list[dict[str, uuid.UUID]] = []
    failed: list[BaseException] = []

    def submit(index: int) -> None:
        order = [first, second] if index % 2 else [second, first]  # opposite key orders
        try:
            start.wait(10)
            ids = clients[index].submit_many([jobs[k] for k in order])
            got.append(dict(zip(order, ids, strict=True)))
        except BaseException as exc:  # a deadlock or a duplicate would land here
            failed.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(racers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for client in clients:
            client.close()
    assert not failed, failed
    assert len(got) == racers and all(g == got[0] for g in got), got
    for key in (first, second):
        assert [r["id"] for r in rows(db, key)] == [got[0][key]]
    assert messages(broker_url) == {str(got[0][first]): 1, str(got[0][second]): 1}


def test_a_concurrent_insert_of_a_held_key_waits_for_the_holder_then_gets_its_job(
        db: Database, database_url: str) -> None:
    """The index decides, not a read: a second transaction inserting the key while the first
    has not committed waits on it, then finds the first's job."""
    key = _key()
    routed = parse_and_route(JobRequest(prompt=PROMPT, idempotency_key=key),
                             Settings().queues)
    holder, late = uuid.uuid4(), uuid.uuid4()
    pools = [Database(database_url, size=1) for _ in range(2)]  # a transaction each
    pid: list[int] = []
    got: list[uuid.UUID] = []

    def second() -> None:
        with pools[1].begin() as conn:
            pid.append(scalar(conn.execute("SELECT pg_backend_pid()")))
            got.extend(keyed.record(conn, [(late, routed)]))

    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE pid = %(p)s "
               "AND wait_event_type = 'Lock'")
    try:
        with pools[0].begin() as conn:
            assert keyed.record(conn, [(holder, routed)]) == [holder]
            thread = threading.Thread(target=second)
            thread.start()
            for _ in range(400):  # until the second insert waits on the first's row
                with db.connect() as look:
                    if pid and scalar(look.execute(waiting, {"p": pid[0]})):
                        break
                threading.Event().wait(0.025)
            else:
                pytest.fail("the second insert never waited on the first transaction")
            assert not got
        thread.join(10)
    finally:
        for made in pools:
            made.close()
    assert got == [holder]
    assert [r["id"] for r in rows(db, key)] == [holder]


def test_the_same_key_in_two_tenants_is_two_jobs(farm: Farm, db: Database) -> None:
    key = _key()
    one = farm.submit(prompt=PROMPT, tenant="t-one", idempotency_key=key)
    two = farm.submit(prompt=PROMPT, tenant="t-two", idempotency_key=key)
    assert one != two
    assert [(r["id"], r["tenant"]) for r in rows(db, key)] == [(one, "t-one"),
                                                                    (two, "t-two")]
    assert farm.submit(prompt=PROMPT, tenant="t-two", idempotency_key=key) == two


def test_a_different_request_under_a_held_key_is_refused_and_nothing_is_enqueued(
        farm: Farm, db: Database, broker_url: str) -> None:
    key = _key()
    holder = farm.submit(prompt=PROMPT, max_tokens=100, idempotency_key=key, tenant="svc")
    assert messages(broker_url) == {str(holder): 1}
    # the same request, written otherwise (defaults spelled out, fields in another order)
    again = {"tenant": "svc", "idempotency_key": key, "priority": "normal",
             "max_tokens": 100, "prompt": PROMPT}
    assert farm.submit(again) == holder
    with db.connect() as conn:
        before = scalar(conn.execute("SELECT count(*) FROM jobs"))
    for batch in ([{"prompt": PROMPT, "max_tokens": 101, "idempotency_key": key,
                    "tenant": "svc"}],
                  [{"prompt": "a fine new job"},
                   {"prompt": "changed", "idempotency_key": key, "tenant": "svc"}]):
        with pytest.raises(IdempotencyConflictError) as conflict:
            farm.submit_many(batch)
        assert conflict.value.holder == holder and conflict.value.key == key
        assert f"{key!r} (tenant 'svc') is held by job {holder}" in str(conflict.value)
        assert PROMPT not in str(conflict.value)
    with db.connect() as conn:
        assert scalar(conn.execute("SELECT count(*) FROM jobs")) == before
    assert messages(broker_url) == {str(holder): 1}
    assert farm.status(holder).status is JobStatus.QUEUED


def test_a_conflict_found_only_at_the_insert_rolls_its_chunk_back(
        farm: Farm, db: Database, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder recorded after the check (a race) is found by the insert: the chunk's
    transaction writes nothing."""
    key = _key()
    holder = farm.submit(prompt=PROMPT, idempotency_key=key)
    monkeypatch.setattr(keyed, "check_held", lambda *_: None)  # as if it ran before
    with pytest.raises(IdempotencyConflictError) as conflict:
        farm.submit_many([{"prompt": "new"}, {"prompt": "other", "idempotency_key": key}])
    assert conflict.value.holder == holder
    assert [r["id"] for r in rows(db, key)] == [holder]
    assert messages(broker_url) == {str(holder): 1}


def test_a_batch_repeating_a_key_is_one_job_within_and_across_chunks(
        farm: Farm, db: Database, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "SUBMIT_CHUNK", 2)
    a, b = _key(), _key()
    ids = farm.submit_many([
        {"prompt": "A", "idempotency_key": a}, {"prompt": "A", "idempotency_key": a},  # chunk 1
        {"prompt": "plain"}, {"prompt": "B", "idempotency_key": b},                    # chunk 2
        {"prompt": "plain"}, {"prompt": "A", "idempotency_key": a},                    # chunk 3
    ])
    assert ids[0] == ids[1] == ids[5] and ids[3] != ids[0]
    assert len({ids[0], ids[2], ids[3], ids[4]}) == 4  # jobs without a key stay apart
    assert [r["id"] for r in rows(db, a)] == [ids[0]]
    assert messages(broker_url) == {str(i): 1 for i in (ids[0], ids[2], ids[3], ids[4])}
    # submitted again: the same ids, nothing published
    assert farm.submit_many([{"prompt": "B", "idempotency_key": b},
                             {"prompt": "A", "idempotency_key": a}]) == [ids[3], ids[0]]
    assert sum(messages(broker_url).values()) == 4
    with pytest.raises(InvalidJobError) as refused:  # the same key, two requests: refused
        farm.submit_many([{"prompt": "C", "idempotency_key": "c-" + a},
                          {"prompt": "D", "idempotency_key": "c-" + a}])
    assert [(i, f) for i, f, _ in refused.value.problems] == [(1, "idempotency_key")]
    assert rows(db, "c-" + a) == []


def test_an_unpublished_keyed_job_stays_failed_and_a_holder_is_never_failed_by_another(
        farm: Farm, db: Database, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    held, lost = _key(), _key()
    holder = farm.submit(prompt=PROMPT, idempotency_key=held)

    def broker_down(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(client_module, "send_job", broker_down)
    with pytest.raises(SubmitError) as cut:
        farm.submit_many([{"prompt": PROMPT, "idempotency_key": held},
                          {"prompt": "new", "idempotency_key": lost}])
    # only the job this submit inserted is failed; the key's holder from before is untouched
    [failed] = cut.value.failed
    assert farm.status(holder).status is JobStatus.QUEUED
    assert farm.status(failed).status is JobStatus.FAILED
    assert farm.status(failed).error == "publish failed: ConnectionError: broker down"
    monkeypatch.undo()
    # as unpublished jobs are: failed for good; its key gives that job, published never
    assert farm.submit(prompt="new", idempotency_key=lost) == failed
    assert farm.status(failed).status is JobStatus.FAILED
    assert messages(broker_url) == {str(holder): 1}


def test_a_replayed_dead_keyed_job_is_a_new_job_without_the_key(
        farm: Farm, db: Database) -> None:
    key = _key()
    dead = farm.submit(prompt=PROMPT, idempotency_key=key)
    with db.begin() as conn:
        conn.execute("UPDATE jobs SET status = 'dead' WHERE id = %(j)s", {"j": dead})
    dlq.record(db, dead, "test", "made dead by the test")
    [(old, new)] = farm.replay([dead])
    assert old == dead and new != dead
    assert farm.submit(prompt=PROMPT, idempotency_key=key) == dead
    assert [r["id"] for r in rows(db, key)] == [dead]


# --- the CLI --------------------------------------------------------------------------

def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
            "FARM_DATA_DIR": str(tmp_path)}


def test_farm_submit_with_a_key_prints_the_same_job_and_names_a_conflict(
        env: dict[str, str], db: Database, broker_url: str) -> None:
    key = _key()
    args = ("submit", "--prompt", PROMPT, "--tenant", "cli", "--idempotency-key", key)
    code, out, err = cli(env, *args)
    assert code == 0, err
    job = out.strip()
    assert cli(env, *args) == (0, f"{job}\n", "")
    assert cli(env, *args[:-2], "--idempotency-key", "x" + key)[1].strip() != job
    code, out, err = cli(env, "submit", "--prompt", "changed", "--tenant", "cli",
                         "--idempotency-key", key)
    assert code == 1 and out == ""
    assert err.startswith(f"Error: idempotency_key {key!r} (tenant 'cli') is held by job "
                          f"{job}, submitted with a different request")
    assert len(err.strip().splitlines()) == 1
    assert [str(r["id"]) for r in rows(db, key)] == [job]
    assert messages(broker_url)[job] == 1


def test_farm_submit_passes_the_saving_options_to_the_job(
        env: dict[str, str], db: Database) -> None:
    code, out, err = cli(env, "submit", "--prompt", PROMPT, "--memo", "--memo-ttl-s", "60",
                         "--cache", "1h", "--no-batch")
    assert code == 0, err
    with db.connect() as conn:
        request = scalar(conn.execute("SELECT request FROM jobs WHERE id = %(j)s",
                                      {"j": out.strip()}))
    assert (request["memo"], request["memo_ttl_s"], request["cache"], request["batch"]) == (
        True, 60, "1h", False)
    code, _, err = cli(env, "submit", "--prompt", PROMPT, "--cache", "2h")
    assert code == 2 and "--cache" in err


def test_farm_submit_file_lines_carry_keys(env: dict[str, str], db: Database,
                                           tmp_path: Path) -> None:
    key = _key()
    path = tmp_path / "jobs.jsonl"
    lines = [{"prompt": "one", "idempotency_key": key}, {"prompt": "two"},
             {"prompt": "one", "idempotency_key": key}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code, out, err = cli(env, "submit", "--file", str(path), "--json")
    assert code == 0, err
    ids = json.loads(out)["job_ids"]
    assert ids[0] == ids[2] != ids[1]
    # a line whose key another line holds with a different request: that line is named
    path.write_text("\n".join(json.dumps(line) for line in (
        lines[1], {"prompt": "three", "idempotency_key": "n-" + key},
        {"prompt": "four", "idempotency_key": "n-" + key})) + "\n")
    code, _, err = cli(env, "submit", "--file", str(path))
    assert code == 1
    assert err.startswith(f"Error: invalid job(s), nothing was enqueued: {path}:3: "
                          f"idempotency_key: {'n-' + key!r} is the key of an earlier job")
    # a line whose key a job holds already with a different request: the line and the job
    path.write_text(json.dumps({"prompt": "other", "idempotency_key": key}) + "\n")
    code, _, err = cli(env, "submit", "--file", str(path))
    assert code == 1
    assert err.startswith(f"Error: {path}:1: idempotency_key {key!r} (tenant 'default') "
                          f"is held by job {ids[0]}")
    assert rows(db, "n-" + key) == [] and len(rows(db, key)) == 1
    code, _, err = cli(env, "submit", "--file", str(path), "--idempotency-key", "k")
    assert code == 2 and "--idempotency-key: with --file, each job's fields come from its " \
        "line" in err


# --- a plain send_task's intake -------------------------------------------------------

class Worker:
    """A farm worker's task on an in-memory broker (dead letters go nowhere else), taking
    inline jobs' messages from farm-intake against the real database."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.app: Celery = create_app(Settings(data_dir=tmp_path), broker_url="memory://")
        self.runtime = rt.Runtime(
            settings=Settings(data_dir=tmp_path), db=db, client=None,
            prices=default_pricebook(), policies=farm_retry_policies, running=Running(),
            stop=threading.Event(), hold=None, gate=None)
        tasks.register(self.app, lambda: self.runtime)
        self.task: Task = self.app.tasks["farm.run_job"]

    def _push(self, job_id: uuid.UUID, request: dict[str, Any]) -> None:
        self.task.push_request(
            id=str(job_id), args=[], kwargs={"request": request}, retries=0,
            delivery_info={"exchange": "farm", "routing_key": "farm-intake"},
            called_directly=False, is_eager=False)

    def intake(self, job_id: uuid.UUID, request: dict[str, Any]) -> uuid.UUID | None:
        """The intake of a delivery only (what runs a recorded job is not tested here)."""
        self._push(job_id, request)
        try:
            return intake_module.intake(self.task, self.runtime, job_id, request, {},
                                        self.task.request.delivery_info)
        finally:
            self.task.pop_request()

    def deliver(self, job_id: uuid.UUID, request: dict[str, Any]) -> dict[str, Any]:
        """A whole delivery, for one that ends at its intake (a duplicate, a refusal)."""
        self._push(job_id, request)
        try:
            return tasks.execute(self.task, self.runtime, None, request, {})
        finally:
            self.task.pop_request()


@pytest.fixture
def worker(db: Database, tmp_path: Path) -> Iterator[Worker]:
    made = Worker(db, tmp_path)
    yield made
    made.app.close()


def test_an_inline_job_under_a_held_key_is_the_holder_and_runs_never(
        farm: Farm, db: Database, worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    holder = farm.submit(prompt=PROMPT, tenant="svc", idempotency_key=key)
    message = uuid.uuid4()
    with caplog.at_level("INFO"):
        result = worker.deliver(message, {"prompt": PROMPT, "tenant": "svc",
                                          "idempotency_key": key})
    # acknowledged (a result, not an error): it names the job holding the key
    assert result == {"job_id": str(holder), "status": "queued", "duplicate_of": str(holder)}
    assert (f"job {message}: its idempotency key is held by job {holder} (queued), sent with "
            "the same request: not run again") in caplog.text
    assert PROMPT not in caplog.text
    assert store.get_jobs(db, [message]) == {}  # no row: nothing of it can run
    assert [r["id"] for r in rows(db, key)] == [holder]


def test_an_inline_keyed_job_holds_the_key_for_every_client_and_a_redelivery_is_itself(
        farm: Farm, db: Database, worker: Worker) -> None:
    key = _key()
    first = uuid.uuid4()
    request = {"prompt": PROMPT, "idempotency_key": key}
    assert worker.intake(first, request) == first
    assert worker.intake(first, request) == first  # the same message again: its own job
    assert farm.submit(prompt=PROMPT, idempotency_key=key) == first
    with pytest.raises(IdempotencyConflictError):
        farm.submit(prompt="changed", idempotency_key=key)
    assert [r["id"] for r in rows(db, key)] == [first]


def test_an_inline_job_under_a_key_held_with_another_request_fails_naming_both(
        farm: Farm, db: Database, worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    holder = farm.submit(prompt="the first request", idempotency_key=key)
    message = uuid.uuid4()
    with caplog.at_level("INFO"), pytest.raises(JobFailed) as ended:
        worker.deliver(message, {"prompt": PROMPT, "idempotency_key": key})
    assert (ended.value.job_id, ended.value.status, ended.value.error_class) == (
        str(message), "failed", "invalid")
    row = store.get_jobs(db, [message], columns=["id", "status", "error"])[message]
    assert row["status"] == "failed"
    assert row["error"] == (f"invalid job: idempotency_key {key!r} (tenant 'default') is held "
                            f"by job {holder}, submitted with a different request: this one "
                            "is refused (a key comes with the same request every time; a new "
                            "job needs a new key)")
    assert dlq.entry(db, message) is not None
    assert [r["id"] for r in rows(db, key)] == [holder]
    assert PROMPT not in caplog.text
