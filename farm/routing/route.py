"""Routing: which specialization queue (and model) serves a job, and why. Pure: no I/O,
no settings object, no Celery.

``route`` honours explicit choices (model, queue, complexity), else it asks
``farm.routing.classify`` and takes the queue configured for that complexity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.jobs import Complexity, FieldError, JobRequest, Route
from farm.routing.classify import classify
from farm.settings import QueueSpec


class UnknownModelError(FieldError):
    """No configured queue serves the requested model."""
    def __init__(self, model: str, known: Sequence[str]) -> None:
        self.model, self.known = model, tuple(known)
        super().__init__("model", f"unknown model {model!r}; known: {', '.join(known) or 'none'}")


class UnknownQueueError(FieldError):
    """No configured queue has the requested name (or serves the requested complexity)."""
    def __init__(self, what: str, known: Sequence[str]) -> None:
        self.known = tuple(known)
        super().__init__("queue", f"unknown queue {what}; known: {', '.join(known) or 'none'}")


def queue_named(name: str, queues: Sequence[QueueSpec]) -> QueueSpec:
    for spec in queues:
        if spec.name == name:
            return spec
    raise UnknownQueueError(repr(name), [q.name for q in queues])


def queue_for_model(model: str, queues: Sequence[QueueSpec], prefer: str = "") -> QueueSpec:
    """The first queue serving `model`; one whose complexity is `prefer`, if there is one."""
    matches = [q for q in queues if q.model == model]
    if not matches:
        raise UnknownModelError(model, list(dict.fromkeys(q.model for q in queues)))
    return next((q for q in matches if q.complexity == prefer), matches[0])


def parse_and_route(raw: Any, queues: Sequence[QueueSpec]) -> tuple[JobRequest, Route]:
    """A job as given (a JobRequest or a mapping), validated, checked against the context
    window and routed. Raises pydantic's ValidationError or a FieldError ("field: …")."""
    request = raw if isinstance(raw, JobRequest) else JobRequest.model_validate(raw)
    request.check_fits_context()
    return request, route(request, queues)


def route(request: JobRequest, queues: Sequence[QueueSpec]) -> Route:
    """Explicit model (and queue), else explicit queue, else explicit complexity, else classify;
    UnknownModelError / UnknownQueueError ("model: …" / "queue: …") name unknown choices."""
    wanted, model, queue = request.complexity, request.model, request.queue
    if model is not None or queue is not None:
        # an explicit model must be configured even when an explicit queue is named too
        spec = queue_for_model(model, queues, wanted.value) if model is not None else None
        spec = queue_named(queue, queues) if queue is not None else spec
        assert spec is not None
        if wanted is Complexity.AUTO:  # the queue's, unless it is configured free-form
            wanted = next((c for c in Complexity if c.value == spec.complexity), wanted)
        explicit = " and ".join(k for k, v in (("model", model), ("queue", queue)) if v)
        return Route(queue=spec.name, model=model or spec.model, complexity=wanted,
                     reason=f"explicit {explicit}")
    reason = "explicit complexity"
    if wanted is Complexity.AUTO:
        wanted, reason = classify(request)
    found = next((q for q in queues if q.complexity == wanted.value), None)
    if found is None:
        raise UnknownQueueError(f"for complexity {wanted.value!r}", [q.name for q in queues])
    return Route(queue=found.name, model=found.model, complexity=wanted, reason=reason)
