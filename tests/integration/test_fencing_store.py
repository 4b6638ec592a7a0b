"""Fencing against real Postgres and a real simulator: the store takes a result only from
the job's current generation (RECORD_SQL agrees with farm.reliability.fencing for every
status), a renewal notices a lease taken over, and a worker whose renewal stalls abandons
its call before the lease can run out."""

from __future__ import annotations

import itertools
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

from farm.client import Farm
from farm.jobs import JobRequest, JobStatus, Usage
from farm.provider import messages as llm
from farm.provider.abort import Calls
from farm.provider.errors import ErrorKind, ProviderError
from farm.reliability import fencing, leases, loops
from farm.settings import Settings
from farm.store import attempts
from farm.store import jobs as store
from farm.store.db import Database
from tests_e2e import API_KEY


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    with Farm(Settings(broker_url=broker_url, database_url=database_url,
                       data_dir=tmp_path)) as f:
        yield f


def started(job: uuid.UUID, attempt: int) -> store.StartedJob:
    return store.StartedJob(id=job, request=JobRequest(prompt="p"), queue="haiku-simple",
                            model="claude-haiku-4-5", attempt=attempt)


def ok(status: JobStatus, text_: str) -> attempts.Outcome:
    return attempts.Outcome(
        status=status, model="claude-haiku-4-5", outcome="ok", started_at=datetime.now(UTC),
        latency_s=2.0, usage=Usage(input_tokens=100, output_tokens=50), cost=Decimal("0.01"),
        http_status=200, response_text=text_, stop_reason="end_turn",
        retry_in_s=5.0 if status is JobStatus.QUEUED else None)


INTENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED)


def test_the_store_follows_the_fencing_rule_for_every_status(farm: Farm) -> None:
    cases = list(itertools.product(list(JobStatus), (2, 1), INTENDED))
    ids = farm.submit_many([{"prompt": f"case {i}"} for i in range(len(cases))])
    seen: set[fencing.Verdict] = set()
    for job, (status, attempt, intended) in zip(ids, cases, strict=True):
        # the job is at generation 2, with an earlier result and totals
        with farm.db.begin() as conn:
            conn.execute(
                "update jobs set status = %(s)s, attempts = 2, response_text = 'earlier', "
                "input_tokens = 10, output_tokens = 5, cost_usd = 0.001, "
                "lease_until = now() + interval '1 minute' where id = %(id)s",
                {"s": status.value, "id": job})
        got = attempts.record(farm.db, started(job, attempt), ok(intended, "late or not"))
        want = fencing.verdict(status, generation=2, attempt=attempt)
        assert got is not None and got.verdict is want, (status, attempt, intended)
        assert got.status is fencing.next_status(status, want, intended)
        seen.add(want)
        with farm.db.connect() as conn:
            row = conn.execute("select * from jobs where id = %(id)s", {"id": job}).fetchone()
            shots = conn.execute("select outcome, error, cost_usd from attempts "
                                 "where job_id = %(id)s", {"id": job}).fetchall()
        assert row is not None and len(shots) == 1
        shot = shots[0]
        assert row.status == got.status.value
        # billed either way: the totals count the call
        assert (row.input_tokens, row.output_tokens) == (110, 55)
        assert row.cost_usd == Decimal("0.011") and shot.cost_usd == Decimal("0.01")
        if want is fencing.Verdict.SUPERSEDED:
            assert shot.outcome == fencing.SUPERSEDED
            assert shot.error == (f"late ok of attempt {attempt}: the job had moved on "
                                  f"(attempt 2, {status.value})")
            assert row.response_text == "earlier" and row.lease_until is not None
        else:
            assert shot.outcome == "ok" and row.response_text == "late or not"
            assert row.lease_until is None
        # the same attempt delivered again changes nothing
        assert attempts.record(farm.db, started(job, attempt), ok(intended, "x")) is None
    assert seen == set(fencing.Verdict)


def test_two_successes_race_and_only_the_current_one_counts(farm: Farm) -> None:
    """The partition case: attempt 1 stalls, the lease runs out, attempt 2 runs elsewhere;
    whichever answers first, only attempt 2 can succeed the job."""
    for late_first in (True, False):
        job = farm.submit(prompt="stalled")
        first = store.start_job(farm.db, job, lease_s=-1)  # its lease already ran out
        second = store.start_job(farm.db, job, lease_s=60)
        assert first is not None and second is not None and second.attempt == 2
        order = [(first, "zombie"), (second, "healthy")]
        for run, text_ in (order if late_first else order[::-1]):
            attempts.record(farm.db, run, ok(JobStatus.SUCCEEDED, text_))
        with farm.db.connect() as conn:
            outcomes = dict(conn.execute(
                "select attempt, outcome from attempts where job_id = %(id)s",
                {"id": job}).fetchall())
        assert outcomes == {1: "superseded", 2: "ok"}
        view = farm.status(job)
        assert view.status is JobStatus.SUCCEEDED and view.response_text == "healthy"
        assert view.cost_usd == Decimal("0.02")  # both calls were billed


def test_a_renewal_finds_a_lease_taken_over(farm: Farm) -> None:
    job, mine = farm.submit(prompt="taken over"), farm.submit(prompt="still mine")
    zombie = leases.Running()
    for jid in (job, mine):
        run = store.start_job(farm.db, jid, lease_s=60)
        assert run is not None
        zombie.add(jid, run.attempt)
    with farm.db.begin() as conn:  # reaped and started again elsewhere
        conn.execute("update jobs set lease_until = now() - interval '1 second' "
                     "where id = %(id)s", {"id": job})
    assert store.start_job(farm.db, job, lease_s=60) is not None
    assert leases.renew(farm.db, zombie, 60) == 1
    assert zombie.lost() == {job}
    assert fencing.to_abandon(zombie.held(), zombie.clock(), lease_s=60, abandon_share=0.75,
                              lost=zombie.lost()) == [job]


@pytest.fixture
def stalled_postgres() -> Iterator[str]:
    """A Postgres that never answers: it accepts connections and says nothing (a renewal
    through it hangs, as across a cut network)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"postgresql+psycopg://farm@127.0.0.1:{server.getsockname()[1]}/farm"
    server.close()
    for conn in held:
        conn.close()


def test_a_worker_whose_renewal_stalls_abandons_its_call(
        farm: Farm, sim_url: str, stalled_postgres: str) -> None:
    httpx2.post(f"{sim_url}/_sim/reset")
    settings = Settings(anthropic_api_key=API_KEY, anthropic_base_url=sim_url, lease_s=8,
                        lease_abandon_share=0.5, request_timeout=120)
    calls = Calls()
    running = leases.Running(abort=calls.abandon, clear=calls.clear)
    client = llm.make_client(settings, calls)
    stalled = Database(stalled_postgres, size=1)
    stop = threading.Event()
    threads = loops.start_threads(stalled, running, lambda *_: None, lease_s=8,
                                  reaper_interval_s=60, stop=stop, abandon_share=0.5)
    job = farm.submit(prompt="a long call")
    try:
        running.add(job, 1)
        # it would succeed after 60 s; it fails: the watchdog stopped it (after 4 s)
        with pytest.raises(ProviderError) as err:
            llm.call(client, "claude-haiku-4-5",
                     JobRequest(prompt="Say hi [[sim:latency=60]]", max_tokens=16))
    finally:
        stop.set()
        client.close()
    assert err.value.kind is ErrorKind.CONNECTION and running.abandoned(job)
    stats = httpx2.get(f"{sim_url}/_sim/stats").json()
    assert stats["messages_requests"] == 1  # the call had reached the provider
    running.discard(job)
    assert not running.abandoned(job) and running.held() == {}
    assert {t.name for t in threads} >= {"farm-lease-renewal", "farm-lease-watchdog"}
