"""A worker process's pool without Celery (farm.pool): the elastic controller on a fake
clock, the health verdicts and the probe endpoints, recycling."""

from __future__ import annotations

import logging

import httpx2
import pytest

from farm.pool import recycle
from farm.pool.elastic import Elastic
from farm.pool.health import Cached, Verdict, liveness, readiness
from farm.pool.probes import serve
from farm.pool.process import Limits, ProcessPool
from farm.pool.slots import Change, SlotPolicy

FAST = SlotPolicy(min=10, max=40, window_s=3, up_cooldown_s=1, down_cooldown_s=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_controller_grows_under_load_and_shrinks_when_idle_through_apply(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, applied, load = Clock(), [], {"busy": 0}
    seen: list[Change] = []
    elastic = Elastic(FAST, lambda a, b: applied.append((a, b)), lambda: load["busy"],
                      clock=clock, on_change=seen.append)
    assert elastic.slots == 10
    caplog.set_level(logging.INFO, "farm.pool")
    timeline = []
    for second in range(40):  # a backlog for 12 s: every slot busy; then idle
        clock.now += 1
        load["busy"] = elastic.slots if second < 12 else 0
        elastic.tick()
        timeline.append(elastic.slots)
    assert applied[:3] == [(10, 20), (20, 30), (30, 40)]  # a step a cool-down (1 s) apart
    assert max(timeline) == 40 and timeline[-1] == 10  # back to min, by 5 every 2 s
    assert [b - a for a, b in applied[3:]] == [-5] * 6
    assert elastic.changes == len(applied) == len(seen) == 9
    assert "slots 10 -> 20 (utilisation 100% over 1s > 80%; bounds 10-40)" in caplog.text
    assert "slots 15 -> 10 (utilisation 0%" in caplog.text


def test_a_failing_apply_leaves_the_slots_as_they_were() -> None:
    clock = Clock()

    def broken(before: int, after: int) -> None:
        raise ConnectionError("broker away")

    elastic = Elastic(FAST, broken, lambda: 10, clock=clock)
    for _ in range(3):
        clock.now += 1
        with pytest.raises(ConnectionError):
            elastic.tick()
    assert elastic.slots == 10 and elastic.changes == 0


def test_liveness_fails_only_on_a_silent_running_consumer() -> None:
    assert liveness(100, 90, consuming=True, stale_after_s=60).ok
    dead = liveness(200, 90, consuming=True, stale_after_s=60)
    assert not dead.ok and dead.reason == "consumer loop has not ticked for 110s (limit 60s)"
    # reconnecting, starting or draining: live (a restart would not help), not ready
    assert liveness(1000, 90, consuming=False, stale_after_s=60).ok
    assert liveness(1000, None, consuming=False, stale_after_s=60).ok


def test_readiness_names_the_first_problem() -> None:
    ok = Verdict(True, "ok")
    assert readiness(ok, consuming=True, draining=None, broker=None, database=None).ok
    assert readiness(Verdict(False, "stuck"), consuming=True, draining=None, broker=None,
                     database=None).reason == "stuck"
    assert readiness(ok, consuming=True, draining="too big", broker="x", database=None
                     ).reason == "draining: too big"
    assert readiness(ok, consuming=False, draining=None, broker=None, database=None
                     ).reason == "not consuming"
    assert readiness(ok, consuming=True, draining=None, broker="ConnectionError: refused",
                     database=None).reason == "broker unreachable: ConnectionError: refused"
    assert readiness(ok, consuming=True, draining=None, broker=None, database="Timeout"
                     ).reason == "database unreachable: Timeout"


def test_a_cached_probe_asks_again_only_after_its_time() -> None:
    clock, calls = Clock(), []

    def probe() -> None:
        calls.append(clock.now)
        if len(calls) == 2:
            raise TimeoutError("no answer in 2s")

    cached = Cached(probe, cache_s=2, clock=clock)
    assert cached() is None and cached() is None and len(calls) == 1
    clock.now += 2
    assert cached() == "TimeoutError: no answer in 2s" and len(calls) == 2
    clock.now += 1
    assert cached() == "TimeoutError: no answer in 2s" and len(calls) == 2
    clock.now += 1
    assert cached() is None and len(calls) == 3


def test_recycling_is_due_past_either_limit_and_never_when_off() -> None:
    assert recycle.due(900, 10, max_rss_mb=800, max_jobs=0) == (
        "resident memory 900 MB is above FARM_WORKER_MAX_RSS_MB (800)")
    assert recycle.due(800, 10, max_rss_mb=800, max_jobs=0) is None
    assert recycle.due(None, 10, max_rss_mb=800, max_jobs=0) is None
    assert recycle.due(10, 500, max_rss_mb=800, max_jobs=500) == (
        "500 jobs done, FARM_WORKER_MAX_JOBS is 500")
    assert recycle.due(10**6, 10**9, max_rss_mb=0, max_jobs=0) is None
    rss = recycle.rss_mb()
    assert rss is not None and 5 < rss < 10_000  # this test process


def _pool(clock: Clock, drained: list[bool], *, jobs: int = 0, broker_ok: bool = True,
          **limits: int) -> ProcessPool:
    def broker() -> None:
        if not broker_ok:
            raise ConnectionError("Error 111 connecting to 10.0.0.1:6379")

    return ProcessPool(("haiku-simple",), FAST, Limits(**limits), apply=lambda a, b: None,
                       busy=lambda: 3, jobs_done=lambda: jobs, drain=lambda: drained.append(True),
                       broker=broker, database=lambda: None, clock=clock, rss_mb=lambda: 120.0)


def test_a_pool_past_its_job_count_drains_once_and_says_so(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    clock, drained = Clock(), []
    pool = _pool(clock, drained, jobs=50, max_jobs=50)
    pool.consuming = True
    pool.loop_ticked()
    assert pool.ready().ok and pool.info()["state"] == "ready"
    assert pool.check_recycle() == "50 jobs done, FARM_WORKER_MAX_JOBS is 50"
    assert pool.check_recycle() == "50 jobs done, FARM_WORKER_MAX_JOBS is 50"
    assert drained == [True]  # once
    assert pool.ready().reason == "draining: 50 jobs done, FARM_WORKER_MAX_JOBS is 50"
    assert pool.live().ok
    assert pool.info() == {"slots_min": "10", "slots_max": "40", "state": "draining",
                           "jobs_done": "50"}
    assert "finishes the 3 it runs" in caplog.text
    assert _pool(clock, drained, jobs=10**6).check_recycle() is None  # limits off


def test_the_probe_endpoints_answer_200_or_503_with_the_reason() -> None:
    clock, drained = Clock(), []
    pool = _pool(clock, drained, broker_ok=False)
    server = serve(pool.live, pool.ready, "127.0.0.1", 18_000)
    try:
        def get(path: str) -> tuple[int, str]:
            answer = httpx2.get(server.url(path), timeout=5)
            return answer.status_code, answer.text.strip()

        assert get("/livez") == (200, "ok (consumer not running: starting, reconnecting or "
                                      "draining)")
        assert get("/readyz") == (503, "not consuming")
        pool.consuming = True
        pool.loop_ticked()
        assert get("/livez") == (200, "ok")
        assert get("/readyz") == (503, "broker unreachable: ConnectionError: Error 111 "
                                       "connecting to 10.0.0.1:6379")
        clock.now += 61  # the loop went silent
        assert get("/livez") == (503, "consumer loop has not ticked for 61s (limit 60s)")
        assert get("/metrics")[0] == 404
        second = serve(pool.live, pool.ready, "127.0.0.1", server.port)  # a second process
        assert second.port > server.port
        second.close()
    finally:
        server.close()
