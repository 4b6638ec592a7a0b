"""What a worker shows of farm.run_job's arguments (its log lines, the task-received event
Flower displays) is redacted, whatever repr the sender put in the message: a service that
sends inline jobs without the farm's router puts the prompt's there.
(tests/e2e/test_secrets.py looks at Flower's task pages of such a job.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu.message import Message
from kombu.utils.imports import symbol_by_name

from farm.app import create_app
from farm.broker.layout import RUN_JOB_TASK
from farm.settings import Settings
from farm.worker import tasks

SECRET = "WORKER-SIDE-SECRET-PROMPT"


@pytest.fixture(scope="module")
def app() -> Iterator[Celery]:
    app = create_app(Settings(), broker_url="memory://")
    tasks.register(app, lambda: None)  # type: ignore[arg-type, return-value]
    yield app
    app.close()


def _request(app: Celery, args: Any, kwargs: Any) -> Any:
    """The worker's request for a run_job message as a plain Celery sender writes it: the
    sender's own repr of the arguments in the headers."""
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                      "chord": None}])
    message = Message(
        body=body, content_type="application/json", content_encoding="utf-8",
        headers={"id": str(uuid.uuid4()), "task": RUN_JOB_TASK, "lang": "py",
                 "argsrepr": repr(args), "kwargsrepr": repr(kwargs)},
        delivery_info={"exchange": "farm", "routing_key": "farm-intake"}, properties={})
    task = app.tasks[RUN_JOB_TASK]
    request_class = symbol_by_name(task.Request)  # as the worker's strategy finds it
    return request_class(message, app=app, task=task)


def test_the_senders_repr_of_a_prompt_is_replaced(app: Celery) -> None:
    kwargs = {"request": {"prompt": SECRET, "system": "be brief"}}
    request = _request(app, [], kwargs)
    shown = (request.argsrepr, request.kwargsrepr, request.request_dict["argsrepr"],
             request.request_dict["kwargsrepr"])
    assert SECRET not in repr(shown)
    assert request.kwargsrepr == f"{{'request': '<redacted {len(SECRET) + 8} chars>'}}"
    assert request.request_dict["kwargsrepr"] == request.kwargsrepr  # what the trace logs
    assert request.kwargs == kwargs  # the task itself gets the job


def test_odd_arguments_are_redacted_too(app: Celery) -> None:
    request = _request(app, [SECRET], {"job_id": "0f8e3bc2-5d5e-4bd9-9a52-6d1b2b8a1b6e",
                                       "colour": SECRET})
    assert request.argsrepr == "(<redacted 1 positional args>)"
    assert request.kwargsrepr == (
        "{'job_id': '0f8e3bc2-5d5e-4bd9-9a52-6d1b2b8a1b6e', "
        f"'colour': '<redacted {len(SECRET)} chars>'}}")


def test_inspect_never_gets_the_raw_arguments(app: Celery) -> None:
    """`celery inspect active/reserved` (Flower's worker page) ask for info(safe=False)."""
    request = _request(app, [], {"request": {"prompt": SECRET}})
    for safe in (False, True):
        shown = request.info(safe=safe)
        assert SECRET not in repr(shown)
        assert shown["kwargs"] == request.kwargsrepr
