"""Memoization's pure decisions (farm.memo.policy): who memoizes and for how long (the job,
else its queue, else its tenant), which answers may serve later jobs, how long a waiting
job waits before it looks again; and the settings that feed them."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.jobs import JobRequest
from farm.memo.policy import (
    POLL_MAX_S,
    POLL_MIN_S,
    MemoPolicy,
    memo_policy,
    queue_spec,
    reusable,
    wait_countdown,
)
from farm.routing.escalation import as_sent
from farm.settings import QueueSpec, Settings

QUEUE = "haiku-simple"
ABSENT = "absent"  # the job's queue is not configured


def settings(tmp_path: Path, tenants: tuple[str, ...] = (), queue_memo: bool | None = None,
             queue_ttl: int | None = None, ttl: int = 86_400) -> Settings:
    queues = (QueueSpec(name=QUEUE, model="claude-haiku-4-5", complexity="simple",
                        memo=queue_memo, memo_ttl_s=queue_ttl),
              QueueSpec(name="sonnet-complex", model="claude-sonnet-5-5",
                        complexity="complex"))
    return Settings(data_dir=tmp_path, queues=queues, memo_tenants=tenants, memo_ttl_s=ttl)


def decide(tmp_path: Path, job: bool | None, queue: bool | str | None, listed: bool,
           **request: object) -> MemoPolicy | None:
    s = settings(tmp_path, ("acme",) if listed else (),
                 queue_memo=None if queue == ABSENT else queue)  # type: ignore[arg-type]
    spec = queue_spec("nowhere" if queue == ABSENT else QUEUE, s.queues)
    return memo_policy(JobRequest(prompt="x", tenant="acme", memo=job, **request), spec, s)


@pytest.mark.parametrize("job", [True, False])
@pytest.mark.parametrize("queue", [True, False, None, ABSENT])
@pytest.mark.parametrize("listed", [True, False])
def test_the_jobs_own_memo_decides_first(tmp_path: Path, job: bool, queue: bool | str | None,
                                         listed: bool) -> None:
    assert (decide(tmp_path, job, queue, listed) is not None) is job


@pytest.mark.parametrize("queue", [True, False])
@pytest.mark.parametrize("listed", [True, False])
def test_else_the_queues_memo(tmp_path: Path, queue: bool, listed: bool) -> None:
    assert (decide(tmp_path, None, queue, listed) is not None) is queue


@pytest.mark.parametrize("queue", [None, ABSENT])
@pytest.mark.parametrize("listed", [True, False])
def test_else_whether_the_tenant_is_listed(tmp_path: Path, queue: bool | str | None,
                                           listed: bool) -> None:
    assert (decide(tmp_path, None, queue, listed) is not None) is listed


def test_the_ttl_is_the_jobs_else_the_queues_else_the_farms(tmp_path: Path) -> None:
    s = settings(tmp_path, queue_ttl=600, ttl=3_600)
    spec = queue_spec(QUEUE, s.queues)
    other = queue_spec("sonnet-complex", s.queues)
    job = JobRequest(prompt="x", memo=True)
    assert memo_policy(job.model_copy(update={"memo_ttl_s": 30}), spec, s) == MemoPolicy(30)
    assert memo_policy(job, spec, s) == MemoPolicy(600)
    assert memo_policy(job, other, s) == MemoPolicy(3_600)
    assert memo_policy(job, None, s) == MemoPolicy(3_600)
    assert memo_policy(job.model_copy(update={"memo": None}), spec, s) is None


def test_memo_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_MEMO_TENANTS", " acme, beta,,gamma ")
    monkeypatch.setenv("FARM_MEMO_TTL_S", "600")
    monkeypatch.setenv("FARM_MEMO_WAIT_S", "30")
    monkeypatch.setenv("FARM_QUEUES", '[{"name": "q", "model": "m", "complexity": "simple", '
                       '"memo": true, "memo_ttl_s": 60}]')
    s = Settings(data_dir=tmp_path)
    assert s.memo_tenants == ("acme", "beta", "gamma")
    assert (s.memo_ttl_s, s.memo_wait_s) == (600, 30.0)
    assert (s.queues[0].memo, s.queues[0].memo_ttl_s) == (True, 60)
    monkeypatch.setenv("FARM_MEMO_TENANTS", "")
    assert Settings(data_dir=tmp_path).memo_tenants == ()


def test_defaults(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert (s.memo_tenants, s.memo_ttl_s, s.memo_wait_s) == ((), 86_400, 120.0)
    assert memo_policy(JobRequest(prompt="x"), queue_spec(QUEUE, s.queues), s) is None


SIMPLE = QueueSpec(name="s", model="claude-haiku-4-5", complexity="simple")
COMPLEX = QueueSpec(name="c", model="claude-sonnet-5-5", complexity="complex")
CHECKED = as_sent(JobRequest(prompt="x", self_check=True))


@pytest.mark.parametrize(("queue", "fallback", "text", "ok"), [
    (SIMPLE, False, "4\nSELF-CHECK: PASS", True),  # a fine answer
    (SIMPLE, False, "4\nSELF-CHECK: FAIL", False),  # kept only because it did not escalate
    (SIMPLE, False, "4", False),  # no self-check line: out of its depth too
    (COMPLEX, False, "4\nSELF-CHECK: FAIL", True),  # nothing escalates from there
    (None, False, "4\nSELF-CHECK: FAIL", True),  # nor from a queue not configured
    (SIMPLE, True, "4\nSELF-CHECK: PASS", False),  # the fallback model's answer
    (COMPLEX, True, "4\nSELF-CHECK: PASS", False),
])
def test_which_answers_may_serve(queue: QueueSpec | None, fallback: bool, text: str,
                                 ok: bool) -> None:
    assert reusable(CHECKED, queue, fallback=fallback, stop_reason="end_turn", text=text,
                    short_budget=1024) is ok


def test_an_answer_cut_short_on_a_short_budget_does_not_serve_on_a_simple_queue() -> None:
    short = as_sent(JobRequest(prompt="x", max_tokens=100))
    assert not reusable(short, SIMPLE, fallback=False, stop_reason="max_tokens", text="4",
                        short_budget=1024)
    assert reusable(short, SIMPLE, fallback=False, stop_reason="max_tokens", text="4",
                    short_budget=50)
    assert reusable(short, COMPLEX, fallback=False, stop_reason="max_tokens", text="4",
                    short_budget=1024)


@pytest.mark.parametrize(("waited", "wait", "countdown"), [
    (0.0, 120.0, POLL_MIN_S),
    (0.5, 120.0, POLL_MIN_S),
    (4.0, 120.0, 2.0),
    (60.0, 120.0, POLL_MAX_S),
    (119.8, 120.0, pytest.approx(0.2)),
    (0.0, 0.3, 0.3),
    (130.0, 120.0, 0.0),
])
def test_a_waiting_job_looks_again_after_half_its_wait_never_past_the_limit(
        waited: float, wait: float, countdown: float) -> None:
    assert wait_countdown(waited, wait) == countdown
