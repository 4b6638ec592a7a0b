"""Routing: which specialization queue (and model) serves a job, and why. Pure: no I/O,
no settings object, no Celery.

``route`` honours explicit choices (model, queue, complexity), else it asks
``farm.routing.classify`` and takes the queue configured for that complexity. With a
second-opinion band (FARM_ROUTER_SECOND_OPINION), a job whose score falls inside it goes
to the simple queue marked ``second_opinion``: its worker asks the simple model first
(farm.routing.second_opinion) and moves it to the complex queue if the answer says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm.jobs import Complexity, FieldError, JobRequest, Route
from farm.routing.classify import decide
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


Band = tuple[float, float]  # (low, high) scores sent to a second opinion, both inclusive


def parse_and_route(raw: Any, queues: Sequence[QueueSpec], band: Band | None = None
                    ) -> tuple[JobRequest, Route]:
    """A job as given (a JobRequest or a mapping), validated, checked against the context
    window and routed. Raises pydantic's ValidationError or a FieldError ("field: …")."""
    request = raw if isinstance(raw, JobRequest) else JobRequest.model_validate(raw)
    request.check_fits_context()
    return request, route(request, queues, band)


def _queue_for(wanted: Complexity, queues: Sequence[QueueSpec]) -> QueueSpec:
    found = next((q for q in queues if q.complexity == wanted.value), None)
    if found is None:
        raise UnknownQueueError(f"for complexity {wanted.value!r}", [q.name for q in queues])
    return found


def route(request: JobRequest, queues: Sequence[QueueSpec], band: Band | None = None
          ) -> Route:
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
    if wanted is not Complexity.AUTO:
        found = _queue_for(wanted, queues)
        return Route(queue=found.name, model=found.model, complexity=wanted,
                     reason="explicit complexity")
    got = decide(request)
    if band is not None and got.score is not None and band[0] <= got.score <= band[1]:
        found = _queue_for(Complexity.SIMPLE, queues)
        return Route(queue=found.name, model=found.model, complexity=Complexity.SIMPLE,
                     reason=f"{got.reason}; uncertain ({band[0]:.2f}-{band[1]:.2f}): "
                            "second opinion", score=got.score, second_opinion=True)
    found = _queue_for(got.complexity, queues)
    return Route(queue=found.name, model=found.model, complexity=got.complexity,
                 reason=got.reason, score=got.score)
