"""The Celery application, built from settings at the edge (CLI, `celery -A farm`)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from farm.jobs import Priority
from farm.settings import RUN_JOB_TASK, Settings


def _import_celeryconfig() -> object:
    try:
        import celeryconfig
    except ImportError:
        # the repo root holds celeryconfig.py; make it importable when running elsewhere
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import celeryconfig
    return celeryconfig


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """(broker URL, database URL): configured ones, else the running embedded services."""
    broker, database = settings.broker_url, settings.database_url
    if broker is None or database is None:
        from farm.services import read_endpoints

        embedded = read_endpoints(settings.data_dir)
        if embedded is None:
            missing = " and ".join(
                n for n, v in (("FARM_BROKER_URL", broker), ("FARM_DATABASE_URL", database))
                if v is None
            )
            raise RuntimeError(
                f"{missing} not set and no embedded services under {settings.data_dir}: "
                "run `make up` (or `farm up`) first, or set the URL"
            )
        broker = broker or embedded.broker_url
        database = database or embedded.database_url
    return broker, database


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("farm", include=["farm.tasks", "farm.worker"])
    app.config_from_object(_import_celeryconfig())
    broker, _ = resolve_urls(settings)
    app.conf.broker_url = broker
    app.conf.worker_send_task_events = settings.task_events
    app.conf.farm_settings = settings
    import farm.worker  # noqa: F401  worker lifecycle signal handlers

    return app


def send_job(app: Celery, job_id: uuid.UUID, queue: str, priority: Priority,
             producer: Any = None) -> None:
    """Publish a job's message. Only its id travels: the request stays in Postgres."""
    app.send_task(RUN_JOB_TASK, kwargs={"job_id": str(job_id)}, task_id=str(job_id),
                  queue=queue, priority=priority.celery_priority, producer=producer)
