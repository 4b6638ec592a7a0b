"""The cluster-wide limits, the circuit breaker and the operator controls, with two real
worker processes sharing one Redis, against the simulator enforcing the same limits."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
import redis
from sqlalchemy import text

from farm.capacity.breaker import Breaker, BreakerConfig
from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import (
    attempt_rows,
    deferrals,
    log_text,
    running_workers,
    wait_for_each,
    wait_until,
    with_status,
)

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
RPM = 120
WORKERS, SLOTS = 2, 20


def _clean(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    try:
        for pattern in ("farm:lim*", "farm:breaker*"):
            keys = list(client.scan_iter(pattern))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def limited_logs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The logs of the two workers of `limited`."""
    folder = tmp_path_factory.mktemp("limits")
    return [folder / f"worker-{i}.log" for i in range(WORKERS)]


@pytest.fixture(scope="module")
def limited(e2e_env: dict[str, str], sim_url: str, limited_logs: list[Path]
            ) -> Iterator[dict[str, str]]:
    """Two workers (20 slots each) on both queues; haiku limited to 120 RPM in the farm's
    settings and at the simulator."""
    _clean(e2e_env["FARM_BROKER_URL"])
    env = {**e2e_env, "FARM_LIMITS": f'{{"{HAIKU}": {{"rpm": {RPM}}}}}',
           "FARM_BREAKER_COOLDOWN_S": "2", "FARM_HOLD_RECHECK_S": "1",
           "FARM_LIMIT_SLEEP_S": "1"}
    specs = [(log, "haiku-simple,sonnet-complex", SLOTS) for log in limited_logs]
    try:
        with running_workers(env, specs):
            yield env
    finally:
        httpx2.post(f"{sim_url}/_sim/config", json={"model_limits": {}, "overload_models": {}})
        _clean(e2e_env["FARM_BROKER_URL"])


def test_workers_together_stay_inside_the_rate_limit(
        limited: dict[str, str], farm: Farm, sim_url: str,
        sim_stats: Callable[[], dict[str, object]]) -> None:
    # the simulator enforces 120 RPM on haiku over 5 s (a bucket of 10, then 2 per second):
    # 30 jobs on 40 slots, all taken at once, would get ~20 429s if the workers did not pace
    # them together
    httpx2.post(f"{sim_url}/_sim/config", json={"model_limits": {HAIKU: {"rpm": RPM}},
                                                "burst_s": 5})
    jobs = 30
    try:
        ids = farm.submit_many([{"prompt": f"[[sim:latency=0.5]] limited {i}?",
                                 "complexity": "simple"} for i in range(jobs)])
        views = farm.wait(ids, timeout=180)
        stats = sim_stats()
    finally:
        httpx2.post(f"{sim_url}/_sim/config", json={"burst_s": None})
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * jobs
    assert all(v.attempts == 1 for v in views)  # waiting for capacity used no attempt
    assert stats["rate_limited_by_model"] == {}, stats["rate_limited_by_model"]  # no 429
    assert stats["messages_requests"] == jobs


def test_one_tenants_backlog_does_not_block_another_tenant(
        limited: dict[str, str], limited_logs: list[Path], farm: Farm, sim_url: str
        ) -> None:
    httpx2.post(f"{sim_url}/_sim/config", json={"model_limits": {HAIKU: {"rpm": RPM}}})
    bulk = farm.submit_many([{"prompt": f"[[sim:latency=0.5]] bulk {i}?", "tenant": "bulk",
                              "complexity": "simple"} for i in range(200)])

    def bulk_not_yet_pressing() -> str | None:
        # the bulk tenant has used what capacity there was and keeps every slot asking:
        # each slot of both workers holds a started bulk job (calling, or waiting in the slot
        # for capacity), and the workers have sent back for want of it as many bulk jobs as
        # they have slots
        taking = len(with_status(farm.engine, bulk, JobStatus.RUNNING.value))
        sent_back = set(deferrals(log_text(*limited_logs), f"{HAIKU}:")) & set(map(str, bulk))
        if taking >= WORKERS * SLOTS and len(sent_back) >= WORKERS * SLOTS:
            return None
        return (f"{taking} of {WORKERS * SLOTS} slots held by bulk jobs; {len(sent_back)} of "
                f"{WORKERS * SLOTS} bulk jobs deferred for want of {HAIKU} capacity")

    wait_until(bulk_not_yet_pressing, timeout=60, interval=0.1)
    small = farm.submit_many([{"prompt": f"[[sim:latency=0.5]] small {i}?",
                               "tenant": "small", "complexity": "simple"} for i in range(10)])
    try:
        views = farm.wait(small, timeout=120)
        assert {v.status for v in views} == {JobStatus.SUCCEEDED}
        with farm.engine.connect() as conn:
            first, last = conn.execute(text(
                "select min(finished_at), max(finished_at) from jobs where id = any(:ids)"),
                {"ids": small}).one()
            during, unfinished = conn.execute(text(
                "select count(*) filter (where finished_at > :first and finished_at < :last), "
                "count(*) filter (where finished_at is null) from jobs where id = any(:ids)"),
                {"ids": bulk, "first": first, "last": last}).one()
    finally:
        for job in bulk:
            farm.cancel(job)
    # while the small tenant had jobs waiting, the bulk tenant (over its fair share) got
    # almost nothing: its calls already scheduled, at most; without fairness it would have
    # taken most of the capacity (it had 4x as many jobs asking)
    assert during <= 10, during
    assert unfinished >= 100, unfinished  # the small tenant did not wait for the backlog


def test_an_overloaded_model_falls_back_and_its_breaker_closes_after_the_storm(
        limited: dict[str, str], farm: Farm, sim_url: str,
        sim_stats: Callable[[], dict[str, object]]) -> None:
    """The storm lasts until its effect is observed (the breaker open, a fallback job served
    by the fallback model), not for a fixed time that a busy machine might outlast."""
    httpx2.post(f"{sim_url}/_sim/config",
                json={"overload_models": {SONNET: time.time() + 600}})
    fallback = farm.submit_many([{"prompt": f"Analyze trade-offs of design {i} in depth.",
                                  "complexity": "complex", "allow_fallback": True,
                                  "max_tokens": 64} for i in range(30)])
    stay = farm.submit_many([{"prompt": f"Analyze trade-offs of plan {i} in depth.",
                              "complexity": "complex", "max_tokens": 64} for i in range(5)])
    client = redis.Redis.from_url(limited["FARM_BROKER_URL"])
    breaker = Breaker(client, BreakerConfig())
    try:
        def storm_not_yet_felt() -> str | None:
            state = breaker.state(SONNET)["state"]
            with farm.engine.connect() as conn:
                on_haiku = conn.execute(text(
                    "select count(*) from jobs where id = any(:ids) and served_model = :m "
                    "and status = 'succeeded'"), {"ids": fallback, "m": HAIKU}).scalar()
            if state != "closed" and on_haiku:
                return None
            return f"breaker {state}, {on_haiku} fallback job(s) served by {HAIKU}"

        wait_until(storm_not_yet_felt, timeout=120)
        still_waiting = with_status(farm.engine, stay, JobStatus.SUCCEEDED.value)
        assert not still_waiting, still_waiting  # no job without fallback ran in the storm
        httpx2.post(f"{sim_url}/_sim/config", json={"overload_models": {}})
        views = {v.id: v for v in farm.wait([*fallback, *stay], timeout=180)}

        def breaker_not_closed() -> str | None:
            state = breaker.state(SONNET)["state"]
            return None if state == "closed" else f"breaker {state}"

        wait_until(breaker_not_closed, timeout=60, interval=0.5)
    finally:
        client.close()
    assert {v.status for v in views.values()} == {JobStatus.SUCCEEDED}
    served = [views[i].served_model for i in fallback]
    assert served.count(HAIKU) >= 1, served  # they kept completing during the storm
    assert all(views[i].served_model == SONNET for i in stay)  # these waited for sonnet
    with farm.engine.connect() as conn:
        mismatched = conn.execute(text(
            "select count(*) from attempts a join jobs j on j.id = a.job_id "
            "where a.outcome = 'ok' and a.model <> j.served_model and j.id = any(:ids)"),
            {"ids": [*fallback, *stay]}).scalar()
    assert mismatched == 0  # every job records the model that served it
    assert dict(sim_stats()["overloaded_by_model"]).get(SONNET, 0) >= 5  # type: ignore[call-overload]


def _farm_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_pause_and_resume_a_queue(limited: dict[str, str], limited_logs: list[Path],
                                  farm: Farm, sim_stats: Callable[[], dict[str, object]]
                                  ) -> None:
    assert "paused on every worker" in _farm_cli(limited, "pause", "haiku-simple")
    # a worker reads the paused queues at most once a second (farm.capacity.admission): a
    # job taken before it has read them runs; this is set-up, not what the test observes
    time.sleep(1.5)
    try:
        ids = farm.submit_many([{"prompt": f"paused {i}?", "complexity": "simple"}
                                for i in range(5)])
        # a worker takes each job and hands it back because the queue is paused; twice
        # each: the pause keeps holding them, not only the first time they are seen
        wait_for_each(limited_logs, ids, "job {id} deferred", "queue haiku-simple is paused",
                      times=2)

        def not_at_rest() -> str | None:
            # a job is `running` for the moment between its start and its hand-back; between
            # two looks it is queued, unstarted, with no attempt used and a time to come back
            with farm.engine.connect() as conn:
                rows = conn.execute(text(
                    "select id, status, attempts, started_at, next_run_at from jobs "
                    "where id = any(:ids)"), {"ids": ids}).all()
            busy = [r for r in rows if not (
                r.status == JobStatus.QUEUED.value and r.attempts == 0
                and r.started_at is None and r.next_run_at is not None)]
            if busy or len(rows) < len(ids):
                return f"{len(rows)} of {len(ids)} rows; not back in the queue: {busy}"
            return None

        wait_until(not_at_rest, timeout=10, interval=0.05)
        assert attempt_rows(farm.engine, ids) == {}  # no call was made for them
        assert sim_stats()["messages_requests"] == 0
        assert "paused queues: haiku-simple" in _farm_cli(limited, "limits")
    finally:
        assert "resumed" in _farm_cli(limited, "resume", "haiku-simple")
    views = farm.wait(ids, timeout=60)
    assert {v.status for v in views} == {JobStatus.SUCCEEDED}
    # once resumed, each ran exactly once: waiting used no attempt
    assert all(v.attempts == 1 for v in views), [(v.id, v.attempts) for v in views]
    assert attempt_rows(farm.engine, ids) == {str(job): 1 for job in ids}
    assert sim_stats()["messages_requests"] == len(ids)


def test_throttle_is_shown_and_lifted(limited: dict[str, str], tmp_path: Path) -> None:
    assert "throttled to 50%" in _farm_cli(limited, "throttle", HAIKU, "50")
    shown = _farm_cli(limited, "limits")
    line = next(ln for ln in shown.splitlines() if ln.startswith(HAIKU))
    assert "50%" in line and " 120 " in line and " 59 " in line  # 120 * 50% * 0.98
    assert "lifted" in _farm_cli(limited, "throttle", HAIKU, "off")
    with pytest.raises(subprocess.CalledProcessError) as bad:
        _farm_cli(limited, "throttle", HAIKU, "150")
    assert "PERCENT must be 1-100" in bad.value.stderr


def test_a_throttle_holds_back_a_model_without_limits(
        limited: dict[str, str], limited_logs: list[Path], farm: Farm) -> None:
    """`farm throttle claude-haiku-4-5 1` used to say "throttled to 1%" while 8 jobs still
    finished at once: a model with no limits had nothing for the percent to cut. Here
    sonnet has none (not configured, the simulator sends no rate-limit headers)."""
    warm = farm.submit_many([{"prompt": f"Analyze trade-offs of warm-up {i} in depth.",
                              "complexity": "complex", "max_tokens": 32} for i in range(20)])
    assert {v.status for v in farm.wait(warm, timeout=60)} == {JobStatus.SUCCEEDED}
    said = _farm_cli(limited, "throttle", SONNET, "1")
    assert f"{SONNET}: throttled to 1% of its recent" in said and "it has no limits" in said
    ids: list[object] = []
    try:
        ids = list(farm.submit_many([
            {"prompt": f"Analyze trade-offs of throttled {i} in depth.",
             "complexity": "complex", "max_tokens": 32} for i in range(8)]))

        def not_all_seen() -> str | None:  # each job ran, or a worker handed it back
            held = deferrals(log_text(*limited_logs), f"{SONNET}: rpm")
            ran = with_status(farm.engine, ids, JobStatus.SUCCEEDED.value)
            unseen = {str(i) for i in ids} - ran - set(held)
            return f"{len(unseen)} job(s) neither ran nor were held back" if unseen else None

        wait_until(not_all_seen, timeout=60)
        ran = with_status(farm.engine, ids, JobStatus.SUCCEEDED.value)
        # the tiny bucket (1% of a few dozen calls a minute) lets one or two through
        assert 1 <= len(ran) <= 2, ran
        assert attempt_rows(farm.engine, ids) == dict.fromkeys(ran, 1)  # the rest: no call
        # lifted: the held-back jobs are sent back at once (their countdowns run ~60 s)
        said = _farm_cli(limited, "throttle", SONNET, "off")
        assert said == (f"{SONNET}: throttle lifted; {len(ids) - len(ran)} waiting job(s) "
                        "sent back to the workers now\n")
        views = farm.wait(ids, timeout=120)
        assert {v.status for v in views} == {JobStatus.SUCCEEDED}
        assert all(v.attempts == 1 for v in views)  # being held back used no attempt
    finally:
        _farm_cli(limited, "throttle", SONNET, "off")
        for job in ids:
            farm.cancel(job)  # if it failed early: they would wait out their deferral
