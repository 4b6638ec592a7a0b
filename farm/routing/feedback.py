"""Labels from the user's own traffic (`farm router feedback JOB simple|complex`), kept in
Postgres (``route_feedback``, one per job, the last one given wins), for ``farm router
report --feedback`` (the router against them) and ``farm router train --feedback`` (they
join the train split). The rows come back in the labelled data's shape (farm.routing.train):
family ``feedback``, with the job's prompt, system and how it was routed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.jobs import Complexity

LABELS = (Complexity.SIMPLE.value, Complexity.COMPLEX.value)  # what the router decides

STORE_SQL = text(
    """
    INSERT INTO route_feedback (job_id, label) SELECT id, :label FROM jobs WHERE id = :job_id
    ON CONFLICT (job_id) DO UPDATE SET label = EXCLUDED.label, created_at = now()
    RETURNING job_id
    """
)
ROWS_SQL = text(
    """
    SELECT f.job_id, f.label, j.request, j.complexity, j.queue, j.route_reason
    FROM route_feedback f JOIN jobs j ON j.id = f.job_id
    ORDER BY f.created_at, f.job_id
    """
)


class UnknownJob(LookupError):
    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"no job {job_id}")


def store(engine: Engine, job_id: uuid.UUID, label: str) -> None:
    """Record (or replace) the label of one job; UnknownJob when there is no such job."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    with engine.begin() as conn:
        if conn.execute(STORE_SQL, {"job_id": job_id, "label": label}).first() is None:
            raise UnknownJob(job_id)


def rows(engine: Engine) -> list[dict[str, Any]]:
    """Every labelled job, in the labelled data's shape plus ``routed`` (the complexity the
    router gave it when it was submitted, "auto" if an explicit choice routed it)."""
    with engine.connect() as conn:
        found = conn.execute(ROWS_SQL).all()
    out = []
    for job_id, label, request, complexity, queue, reason in found:
        explicit = (reason or "").startswith(("explicit", "metadata hint"))
        out.append({"id": f"feedback-{job_id}", "family": "feedback", "split": "train",
                    "label": label, "prompt": request.get("prompt", ""),
                    "system": request.get("system"), "routed": "auto" if explicit
                    else complexity, "queue": queue, "reason": reason or ""})
    return out
