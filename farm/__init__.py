"""farm: an LLM task farm on Celery.

``celery -A farm worker`` finds the worker's app as ``farm.app``, built on first access
from the environment's settings (farm.worker.wiring). The Python API for services is
:class:`farm.client.Farm`.

The package is organised by area: ``broker`` (kombu's Redis layout), ``capacity`` (limits,
breakers, admission), ``reliability`` (retry policies, leases, orphans, hold, dead
letters), ``provider`` (the Messages API call), ``routing``, ``store`` (Postgres),
``costs`` (pricing, reports), ``worker`` (tasks, runtime, lifecycle), ``sim`` (the API
simulator) and ``cli``; ``jobs``, ``settings``, ``services``, ``app`` and ``client`` are the
shared edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["celery"]

_app: Celery | None = None


def get_app() -> Celery:
    """The worker's Celery app, created from the environment's settings on first use."""
    global _app
    if _app is None:
        from farm.worker.wiring import worker_app

        _app = worker_app()
    return _app


def __getattr__(name: str) -> Any:
    if name == "celery":
        return get_app()
    raise AttributeError(f"module 'farm' has no attribute {name!r}")
