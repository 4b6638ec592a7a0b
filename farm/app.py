"""The Celery application of the farm, built from settings at the edge (CLI, client,
`celery -A farm`): the configuration in celeryconfig.py, the broker URL, and the queues and
router of the configured specialization queues (FARM_QUEUES).

This app publishes; a worker's app is this one with the tasks and the worker's signal
handlers installed on it (farm.worker.wiring). Nothing secret goes into the app's
configuration: Flower shows it to every operator.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from farm.broker import transport
from farm.broker.layout import RUN_JOB_TASK, celery_priority, declare_queues
from farm.jobs import Priority
from farm.routing.router import CeleryRouter
from farm.services import resolve_urls
from farm.settings import Settings


def _import_celeryconfig() -> object:
    try:
        import celeryconfig
    except ImportError:
        # the repo root holds celeryconfig.py; make it importable when running elsewhere
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import celeryconfig
    return celeryconfig


def create_app(settings: Settings, *, broker_url: str | None = None) -> Celery:
    """A Celery app for these settings; ``broker_url`` saves resolving it again. Its
    redis:// and rediss:// URLs resolve to the farm's hardened transport (registered here)."""
    transport.register()
    app = Celery("farm")
    app.config_from_object(_import_celeryconfig())
    # a configured broker is enough (Flower has no database URL); else the embedded one
    app.conf.broker_url = broker_url or settings.broker_url or resolve_urls(settings).broker_url
    app.conf.worker_send_task_events = settings.task_events
    queue_names = tuple(q.name for q in settings.queues)
    app.conf.task_queues = declare_queues(queue_names)
    app.conf.task_routes = (CeleryRouter(settings.queues),)
    return app


def send_job(app: Celery, job_id: uuid.UUID, queue: str, priority: Priority,
             producer: Any = None) -> None:
    """Publish a job's message. Only its id travels: the request stays in Postgres.

    Nothing is declared on the way (``declare=[]``): the message goes through the anonymous
    exchange straight onto the queue's list, which needs no declaration on Redis, and
    kombu's declare-once check still copied and bound the queue on every publish."""
    app.send_task(RUN_JOB_TASK, kwargs={"job_id": str(job_id)}, task_id=str(job_id),
                  queue=queue, priority=celery_priority(priority), producer=producer,
                  declare=[])
