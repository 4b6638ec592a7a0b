"""The fencing rule (farm.reliability.fencing): which result moves a job on, and which calls
the lease watchdog stops. Exhaustive over statuses and generations."""

from __future__ import annotations

import itertools

import pytest

from farm.jobs import JobStatus
from farm.reliability.fencing import (
    MOVABLE,
    OPEN,
    Held,
    Verdict,
    next_status,
    to_abandon,
    verdict,
)

INTENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.QUEUED)


@pytest.mark.parametrize(("status", "generation", "attempt"), list(itertools.product(
    list(JobStatus), (1, 2, 5), (1, 2, 5))))
def test_only_the_current_generation_of_an_unfinished_job_is_current(
        status: JobStatus, generation: int, attempt: int) -> None:
    found = verdict(status, generation, attempt)
    if attempt == generation and status in (JobStatus.RUNNING, JobStatus.QUEUED,
                                            JobStatus.CANCELLED):
        assert found is Verdict.CURRENT
    else:
        assert found is Verdict.SUPERSEDED


def test_a_late_result_of_an_earlier_attempt_is_superseded_whatever_the_status() -> None:
    # the partition case: attempt 1 stalled, attempt 2 ran elsewhere (and may still run)
    for status in JobStatus:
        assert verdict(status, generation=2, attempt=1) is Verdict.SUPERSEDED
    # a finished job takes no result at all, not even from its own generation
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD):
        assert verdict(status, generation=1, attempt=1) is Verdict.SUPERSEDED


@pytest.mark.parametrize(("status", "found", "intended"), list(itertools.product(
    list(JobStatus), list(Verdict), INTENDED)))
def test_next_status(status: JobStatus, found: Verdict, intended: JobStatus) -> None:
    after = next_status(status, found, intended)
    if found is Verdict.CURRENT and status in MOVABLE:
        assert after is intended
    else:  # a superseded result, or a cancelled job: the status stays
        assert after is status


def test_a_superseded_result_never_makes_a_success() -> None:
    for status, gen, attempt in itertools.product(list(JobStatus), (1, 2), (1, 2)):
        found = verdict(status, gen, attempt)
        after = next_status(status, found, JobStatus.SUCCEEDED)
        if found is Verdict.SUPERSEDED:
            assert after is status
    assert set(MOVABLE) < set(OPEN)


def held(at: float, generation: int = 1) -> Held:
    return Held(generation=generation, thread=1, held_at=at)


def test_calls_are_abandoned_at_the_share_of_the_lease_without_renewal() -> None:
    jobs = {"fresh": held(100.0), "due": held(70.0), "late": held(50.0), "edge": held(70.1)}
    # lease 40 s, abandon at 75 %: 30 s without a renewal
    assert to_abandon(jobs, 100.0, lease_s=40, abandon_share=0.75) == ["due", "late"]
    assert to_abandon(jobs, 100.0, lease_s=40, abandon_share=0.75, lost=["fresh"]) == [
        "fresh", "due", "late"]
    assert to_abandon({}, 100.0, lease_s=40, abandon_share=0.75, lost=["gone"]) == []
    assert to_abandon(jobs, 60.0, lease_s=40, abandon_share=0.75) == []


def test_running_tracks_leases_and_stops_each_call_once() -> None:
    import threading
    import uuid

    from farm.reliability.leases import Running

    now = [100.0]
    stopped: list[int] = []
    cleared: list[int] = []
    running = Running(abort=stopped.append, clear=cleared.append, clock=lambda: now[0])
    one, two, three = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for job in (one, two, three):
        running.add(job, 1)
    me = threading.get_ident()
    asked = running.held()
    assert {h.thread for h in asked.values()} == {me} and asked[one].held_at == 100.0
    running.add(three, 2)  # started again by this process meanwhile: not this renewal's
    now[0] = 125.0
    running.renewed(asked, kept={one}, at=120.0)
    assert running.held()[one].held_at == 120.0 and running.held()[two].held_at == 100.0
    assert running.lost() == {two}  # the renewal did not keep it: taken over
    assert to_abandon(running.held(), now[0], lease_s=40, abandon_share=0.75,
                      lost=running.lost()) == [two]
    now[0] = 131.0  # three (re-added at 100) is now 31 s without renewal
    assert to_abandon(running.held(), now[0], lease_s=40, abandon_share=0.75,
                      lost=running.lost()) == [two, three]
    assert running.abandon(two) and not running.abandon(two)  # once
    assert stopped == [me] and running.abandoned(two) and not running.abandoned(one)
    running.discard(two)
    assert cleared == [me] and not running.abandoned(two) and running.lost() == set()
    assert not running.abandon(two)  # over: nothing to stop
    assert stopped == [me]
