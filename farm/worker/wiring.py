"""The worker's app, built from the top: settings once, then the Celery app (farm.app), then
the tasks and the lifecycle handlers installed on it with the settings handed down typed.
Nothing of the settings goes into Celery's configuration (Flower shows it to operators)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from farm.app import create_app, send_job
from farm.batches import loop as batch_loop
from farm.jobs import Priority
from farm.reliability.policies import RetryPolicy
from farm.settings import Settings
from farm.worker import event_step, lifecycle, pool_step, tasks
from farm.worker import runtime as rt


def install(app: Celery, settings: Settings, policies: Mapping[str, RetryPolicy]) -> None:
    """Make ``app`` a farm worker's app: its tasks and its lifecycle handlers."""

    def republish(job_id: Any, queue: str, priority: str) -> None:
        send_job(app, job_id, queue, Priority(priority))

    def runtime() -> rt.Runtime:
        return rt.current() or rt.get(settings, policies, republish)

    tasks.register(app, runtime)
    # the Message Batches loop (farm.batches.loop) runs in every worker process
    lifecycle.connect(settings, runtime,
                      when_ready=lambda built: batch_loop.start_for(app, built))
    app.steps["consumer"].add(pool_step.make_step(settings))
    app.steps["consumer"].add(event_step.make_step(settings.events_flush_s))


def worker_app(settings: Settings | None = None) -> Celery:
    """The app `celery -A farm worker` runs: settings from the environment by default."""
    settings = settings or Settings()
    app = create_app(settings)
    install(app, settings, app.conf.farm_retry_policies)
    return app
