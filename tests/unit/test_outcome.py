"""How a delivery ends for Celery and Flower (farm.worker.outcome): from the job's status,
and a failure that names the job, its status and error class only."""

from __future__ import annotations

import pickle

import pytest
from celery.utils.serialization import get_pickleable_exception

from farm.jobs import JobStatus
from farm.worker.outcome import Ending, JobFailed, ending


@pytest.mark.parametrize(("status", "expected"), [
    (JobStatus.SUCCEEDED, Ending.SUCCESS),
    (JobStatus.FAILED, Ending.FAILURE),
    (JobStatus.DEAD, Ending.FAILURE),
    (None, Ending.FAILURE),  # no such job: the message is dropped, a failure
    (JobStatus.CANCELLED, Ending.REVOKED),
    (JobStatus.RUNNING, Ending.IGNORED),  # another delivery has it and reports its end
    (JobStatus.QUEUED, Ending.IGNORED),
])
def test_the_job_s_status_says_how_the_delivery_ends(status: JobStatus | None,
                                                     expected: Ending) -> None:
    assert ending(status) is expected
    assert ending(None if status is None else status.value) is expected  # as read from SQL


def test_job_failed_names_job_status_and_error_class_only() -> None:
    exc = JobFailed("3f0c0d8e-0000-4000-8000-000000000001", JobStatus.DEAD, "overloaded")
    assert str(exc) == "job 3f0c0d8e-0000-4000-8000-000000000001 dead: overloaded"
    # what Celery's events (so Flower) and the worker's log carry
    assert repr(exc) == "JobFailed('3f0c0d8e-0000-4000-8000-000000000001', 'dead', 'overloaded')"
    # Celery sends the exception as it is when it pickles (else a stand-in without the class)
    assert get_pickleable_exception(exc) is exc
    again = pickle.loads(pickle.dumps(exc))
    assert (again.job_id, again.status, again.error_class) == (exc.job_id, "dead", "overloaded")
