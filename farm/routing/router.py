"""The Celery router of ``farm.run_job``: it picks the queue at the sender and keeps
prompts out of task reprs (Flower, logs). The farm's own app routes with its configured
queues (``CeleryRouter(settings.queues)``); ``route_task`` is the same router over the
built-in queues, named by string in celeryconfig for services that only have the config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from farm.broker.layout import INTAKE_QUEUE, RUN_JOB_TASK
from farm.jobs import JobRequest
from farm.routing.route import parse_and_route
from farm.settings import DEFAULT_QUEUES, QueueSpec

_SHOWN = {"job_id": re.compile(r"[0-9A-Fa-f-]{1,64}"), "queue": re.compile(r"[\w.:-]{1,64}")}
_KEY = re.compile(r"[A-Za-z_]\w{0,63}")


def _redacted(value: Any) -> str:
    value = value.model_dump() if isinstance(value, JobRequest) else value
    if isinstance(value, Mapping):
        texts = [value.get("prompt"), value.get("system")]
        return f"<redacted {sum(len(t) for t in texts if isinstance(t, str))} chars>"
    if isinstance(value, str):
        return f"<redacted {len(value)} chars>"
    return f"<redacted {type(value).__name__}>"


def redact_args(args: Any) -> str:
    """A repr of run_job's positional arguments: how many, never what."""
    if isinstance(args, (list, tuple)):
        return "()" if not args else f"(<redacted {len(args)} positional args>)"
    return f"(<redacted {type(args).__name__}>)"


def redact_kwargs(kwargs: Any) -> str:
    """A repr of run_job's kwargs without prompt/system text: only a UUID-like job_id and a
    queue name are shown; every other value becomes '<redacted N chars>'."""
    if not isinstance(kwargs, Mapping):
        return f"<redacted {type(kwargs).__name__}>"
    shown: dict[str, str] = {}
    for index, (key, value) in enumerate(list(kwargs.items())[:16]):
        name = key if isinstance(key, str) and _KEY.fullmatch(key) else f"<key {index}>"
        pattern = _SHOWN.get(name)
        safe = pattern is not None and isinstance(value, str) and pattern.fullmatch(value)
        shown[name] = value if safe else _redacted(value)
    return repr(shown)


class CeleryRouter:
    """A Celery router (an entry of ``task_routes``) over the given specialization queues;
    None for other tasks.

    For farm.run_job: always redacted argsrepr/kwargsrepr, and the queue: an explicit ``queue``
    option is kept (Celery's merge prefers the caller's options); else a ``queue`` kwarg; else
    an inline ``request`` classified against the queues, or farm-intake when invalid or
    unroutable, where the worker records the failure."""

    def __init__(self, queues: Sequence[QueueSpec]) -> None:
        self.queues = tuple(queues)

    def __repr__(self) -> str:
        return f"CeleryRouter({', '.join(q.name for q in self.queues)})"

    def __call__(self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                 options: Mapping[str, Any] | None, task: Any = None, **kw: Any,
                 ) -> dict[str, Any] | None:
        if name != RUN_JOB_TASK:
            return None
        kwargs = kwargs or {}
        out: dict[str, Any] = {
            "argsrepr": redact_args(args or ()),
            "kwargsrepr": redact_kwargs(kwargs),
        }
        if (options or {}).get("queue"):
            return out
        if isinstance(queue := kwargs.get("queue"), str) and queue:
            return {**out, "queue": queue}
        if "request" not in kwargs:
            return out  # a job id only: Celery's task_default_queue (farm-intake) applies
        if set(kwargs) - {"job_id", "request", "queue"}:
            return {**out, "queue": INTAKE_QUEUE}
        try:
            _, chosen = parse_and_route(kwargs["request"], self.queues)
            return {**out, "queue": chosen.queue}
        except (ValidationError, ValueError, TypeError):
            return {**out, "queue": INTAKE_QUEUE}


# celeryconfig's `task_routes = ("farm.routing.router.route_task",)`: a sender has no farm
# settings, so it routes against the built-in queues
route_task = CeleryRouter(DEFAULT_QUEUES)
