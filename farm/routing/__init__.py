"""Routing: which specialization queue and model serve a job.

``classify`` (how complex a job is, from its text), ``route`` (explicit choices, else the
class's queue) and ``router`` (the Celery router: the queue at the sender, prompts kept out
of task reprs). All pure but the router's Celery signature.

``farm.routing.route_task``, the router's name before the package was split, still resolves
(a sender's ``task_routes`` may name it); celeryconfig names ``farm.routing.router.route_task``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "route_task":
        from farm.routing.router import route_task

        return route_task
    raise AttributeError(f"module 'farm.routing' has no attribute {name!r}")
