"""Result memoization end to end: a real worker and the simulator. Identical memo jobs in
flight at the same time make one call and all get its answer (the others are hits: cost 0,
the saving recorded); a job that differs in anything sent is a miss; jobs that do not
memoize always call; an identical job later is answered from Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text as sql

from farm.client import Farm, JobView
from farm.jobs import JobStatus
from tests_e2e import lines_per_id, log_text, running_workers

Stats = Callable[[], dict[str, Any]]
SLOTS = 24  # more than the identical jobs: all of them are in flight at once


@pytest.fixture(scope="module")
def worker(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("memo") / "worker.log"
    with running_workers(e2e_env, [(log, "haiku-simple", SLOTS)]):
        yield log


def run(farm: Farm, jobs: list[dict[str, Any]]) -> list[JobView]:
    views = farm.wait(farm.submit_many(jobs), timeout=120)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * len(jobs), [
        (v.status, v.error) for v in views]
    return views


def test_identical_jobs_in_flight_make_one_call(worker: Path, farm: Farm,
                                                sim_stats: Stats) -> None:
    tenant = f"memo-{uuid.uuid4().hex[:8]}"
    # the call takes 2 s: every identical job is delivered while it is in flight
    job = {"prompt": "[[sim:latency=2]] [[sim:tokens=20]] Name the largest planet.",
           "tenant": tenant, "complexity": "simple", "memo": True, "max_tokens": 64}
    views = run(farm, [job] * 20)
    assert sim_stats()["messages_requests"] == 1
    originals = [v for v in views if not v.cache_hit]
    hits = [v for v in views if v.cache_hit]
    assert len(originals) == 1 and len(hits) == 19
    first = originals[0]
    assert first.cost_usd is not None and first.cost_usd > 0 and first.attempts == 1
    assert first.saved_usd is None
    for hit in hits:
        assert hit.cost_usd == Decimal(0) and hit.saved_usd == first.cost_usd
        assert (hit.response_text, hit.stop_reason, hit.served_model) == (
            first.response_text, first.stop_reason, first.served_model)
        assert (hit.attempts, hit.input_tokens, hit.output_tokens) == (0, 0, 0)
    # the delivery's result (what Flower shows) says so
    text = log_text(worker)
    said = lines_per_id(text, [h.id for h in hits], "Task farm.run_job[{id}] succeeded",
                        "'cache_hit': True", f"'memo_of': '{first.id}'")
    assert set(said.values()) == {1}, said
    assert lines_per_id(text, [first.id], "[{id}] succeeded", "cache_hit") == {
        str(first.id): 0}

    # a job that differs only in its temperature is another call
    warmer = run(farm, [{**job, "temperature": 0.3}])[0]
    assert not warmer.cache_hit and warmer.cost_usd and warmer.cost_usd > 0
    assert sim_stats()["messages_requests"] == 2
    # jobs that do not memoize always call, identical or not
    plain = run(farm, [{**job, "memo": False}] * 3)
    assert [v.cache_hit for v in plain] == [False] * 3
    assert sim_stats()["messages_requests"] == 5
    # an identical memo job later: answered from the first job's answer, no call
    later = run(farm, [job])[0]
    assert later.cache_hit and later.saved_usd == first.cost_usd
    assert later.response_text == first.response_text
    # another tenant's identical job is its own
    other = run(farm, [{**job, "tenant": f"{tenant}-b"}])[0]
    assert not other.cache_hit
    assert sim_stats()["messages_requests"] == 6
    with farm.engine.connect() as conn:
        saved = conn.execute(sql("select sum(saved_usd) from jobs where tenant = :t"),
                             {"t": tenant}).scalar_one()
    assert saved == 20 * first.cost_usd


def test_an_answer_that_may_not_serve_is_not_reused(worker: Path, farm: Farm,
                                                    sim_stats: Stats) -> None:
    """On a simple queue, an answer cut at a short max_tokens stands only because the job
    would not escalate: an identical job that would must not get it. Each job calls, and
    the jobs that waited for the first do not wait for one another."""
    job = {"prompt": "[[sim:latency=1]] [[sim:tokens=200]] Describe Jupiter.",
           "tenant": f"memo-{uuid.uuid4().hex[:8]}", "complexity": "simple", "memo": True,
           "max_tokens": 64}
    views = run(farm, [job] * 5)
    assert [(v.cache_hit, v.stop_reason) for v in views] == [(False, "max_tokens")] * 5
    assert sim_stats()["messages_requests"] == 5
