"""The Celery app built from settings (farm.app): FARM_QUEUES is honoured everywhere the
app looks at queues (declarations, routing, retry policies), and jobs are published with
only their id, at their priority's step."""

from __future__ import annotations

import uuid
from typing import Any

from celery.signals import before_task_publish

from farm.app import create_app, send_job
from farm.broker.layout import (
    DEAD_LETTER_QUEUE,
    INTAKE_QUEUE,
    PRIORITY_STEPS,
    RUN_JOB_TASK,
    SEP,
    celery_priority,
    queue_keys,
)
from farm.jobs import Priority
from farm.reliability.policies import DEFAULT_RETRY_POLICY, policy_for
from farm.settings import QueueSpec, Settings

CUSTOM = (
    QueueSpec(name="fast-lane", model="claude-haiku-4-5", complexity="simple"),
    QueueSpec(name="deep-lane", model="claude-sonnet-5-5", complexity="complex"),
)


def custom_app() -> Any:
    return create_app(Settings(queues=CUSTOM), broker_url="memory://")


def test_the_configured_queues_are_declared_with_intake_and_dead_letter() -> None:
    app = custom_app()
    try:
        names = [q.name for q in app.conf.task_queues]
        assert names == ["fast-lane", "deep-lane", INTAKE_QUEUE, DEAD_LETTER_QUEUE]
        assert {q.routing_key for q in app.conf.task_queues} == set(names)
    finally:
        app.close()


def test_the_router_routes_to_the_configured_queues() -> None:
    app = custom_app()
    published: list[str] = []

    def capture(routing_key: Any = None, **_: Any) -> None:
        published.append(routing_key)

    before_task_publish.connect(capture, weak=False)
    try:
        app.send_task(RUN_JOB_TASK, kwargs={"request": {"prompt": "What is 2 + 2?"}})
        app.send_task(RUN_JOB_TASK, kwargs={"request": {
            "prompt": "Design a distributed job queue with exactly-once delivery across three "
                      "regions, and weigh the trade-offs of each choice.", "max_tokens": 8000}})
        app.send_task(RUN_JOB_TASK, kwargs={"request": {"prompt": ""}})
    finally:
        before_task_publish.disconnect(capture)
        app.close()
    assert published == ["fast-lane", "deep-lane", INTAKE_QUEUE]


def test_a_configured_queue_without_a_policy_follows_the_default() -> None:
    app = custom_app()
    try:
        policies = app.conf.farm_retry_policies
        assert "fast-lane" not in policies
        assert policy_for(policies, "fast-lane") == policies["default"] == DEFAULT_RETRY_POLICY
    finally:
        app.close()


def test_a_job_is_published_with_its_id_only_at_its_priority_step() -> None:
    app = custom_app()
    seen: list[tuple[Any, Any, Any]] = []

    def capture(headers: Any = None, body: Any = None, properties: Any = None, **_: Any
                ) -> None:
        seen.append((headers["id"], body[1], properties["priority"]))

    job_id = uuid.uuid4()
    before_task_publish.connect(capture, weak=False)
    try:
        send_job(app, job_id, "deep-lane", Priority.LOW)
    finally:
        before_task_publish.disconnect(capture)
        app.close()
    assert seen == [(str(job_id), {"job_id": str(job_id)}, celery_priority(Priority.LOW))]


def test_priority_steps_and_queue_keys_are_one_declaration() -> None:
    assert sorted(celery_priority(p) for p in Priority) == list(PRIORITY_STEPS)
    assert queue_keys("q") == ["q", *(f"q:{s}" for s in PRIORITY_STEPS[1:])]


def test_the_routers_former_name_still_resolves() -> None:
    """A sender's task_routes may still name the router as before the package was split."""
    from kombu.utils.imports import symbol_by_name

    from farm.routing.router import route_task

    assert symbol_by_name("farm.routing.route_task") is route_task
    assert symbol_by_name("farm.routing.router.route_task") is route_task


def test_redis_urls_resolve_to_the_hardened_transport_and_read_as_redis() -> None:
    from flower.utils.broker import Broker, Redis

    from farm.broker.transport import Transport

    for url, shown in (("redis://:pw@127.0.0.1:6399/6", "redis://:**@127.0.0.1:6399/6"),
                       ("rediss://:pw@127.0.0.1:6399/6", "rediss://:**@127.0.0.1:6399/6")):
        app = create_app(Settings(), broker_url=url)
        try:
            with app.connection() as conn:  # not connected: nothing is called here
                assert isinstance(conn.transport, Transport)
                assert conn.as_uri() == shown
                with_password = conn.as_uri(include_password=True)
        finally:
            app.close()
        assert with_password == url
    # what Flower builds its broker view from: the Redis one, with kombu's priority lists
    broker = Broker("redis://:pw@127.0.0.1:6399/6",
                    broker_options=app.conf.broker_transport_options)
    assert isinstance(broker, Redis)
    assert (tuple(broker.priority_steps), broker.sep) == (PRIORITY_STEPS, SEP)
    assert [broker._q_for_pri("q", step) for step in PRIORITY_STEPS] == queue_keys("q")


def test_flower_lists_the_queues_consumed_and_the_ones_declared() -> None:
    from farm.cli.flower import queue_names

    assert queue_names(["haiku-simple", INTAKE_QUEUE],
                       ["haiku-simple", "sonnet-complex", INTAKE_QUEUE, DEAD_LETTER_QUEUE]
                       ) == [DEAD_LETTER_QUEUE, INTAKE_QUEUE, "haiku-simple", "sonnet-complex"]
