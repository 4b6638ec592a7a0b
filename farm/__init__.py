"""farm: an LLM task farm on Celery.

``celery -A farm worker`` finds the app through ``farm.app`` (built on first access).
The Python API for services is :class:`farm.client.Farm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["app", "celery"]

_app: Celery | None = None


def get_app() -> Celery:
    """The process's Celery app, created from the environment's settings on first use."""
    global _app
    if _app is None:
        from farm.celery_app import create_app

        _app = create_app()
        from farm import tasks  # noqa: F401  registers the tasks

    return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(f"module 'farm' has no attribute {name!r}")
