"""Flower for the farm: `farm flower` runs ``python -m farm.cli.flower``, which is Celery's
``flower`` command on the farm's app (``celery -A farm flower``) with one addition.

Flower's Broker page and ``/api/queues/length`` list only the queues some worker consumes (it
asks the workers), so never the dead-letter queue, which has no consumer unless an operator
drains it. Here they list those and every queue the farm declares: the specialization queues
(``FARM_QUEUES``), ``farm-intake`` and ``dead-letter``. The lengths are Flower's own count:
the sum of the queue's Redis lists, one per priority step (the steps and the separator come
from ``broker_transport_options``), so high, normal and low priority messages all count.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def queue_names(consumed: Iterable[str], declared: Iterable[str]) -> list[str]:
    """The queues Flower reports: those the workers consume and those the farm declares."""
    return sorted(set(consumed) | set(declared))


def list_declared_queues() -> None:
    """Make Flower's queue list (Broker page, /api/queues/length) include every queue the
    app declares. Flower has no option for it: its handlers' queue list is replaced."""
    from flower.views import BaseHandler

    consumed = BaseHandler.get_active_queue_names
    if getattr(consumed, "farm_declared_queues", False):
        return

    def get_active_queue_names(self: Any) -> list[str]:
        declared = (q.name for q in self.capp.conf.task_queues or () if q.name)
        return queue_names(consumed(self), declared)

    get_active_queue_names.farm_declared_queues = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = get_active_queue_names


def main(argv: list[str]) -> int:
    """``celery -A farm flower ARGV``, with every declared queue listed."""
    from celery.bin.celery import main as celery

    list_declared_queues()
    sys.argv = [sys.argv[0], "-A", "farm", "flower", *argv]
    return int(celery() or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
