"""The SDK clients of a worker process: one per group of threads, each thread keeping its
own.

One client for all threads was the simple choice, and it costs the most where a worker is
busiest: the HTTP connection pool (httpcore, under the SDK) looks over every connection and
every waiting request, under one lock, on each request and each response, and every other
thread that wants the pool waits for that lock. With 1,000 threads on one pool of 1,000
connections that scan is most of a call's CPU. Measured here (one process, `-c 1000`, 1 s
latency, 4,000 plain SDK calls from Celery tasks, one run): one client 154-174 jobs/s at
5.4-6.3 ms CPU per job; 10 clients of 108 connections 239 jobs/s at 3.9 ms; 32 of 40, 246
jobs/s at 3.6 ms. At `-c 100` too, one pool for all 100 threads was the farm's bound where
the provider is fast: in the cpu-bound bench (50 ms calls) 43 of its 100 threads on average
were waiting for that pool's lock (`py-spy dump`), and with one client per 10
threads the farm's jobs/s rose 1.14-1.17x (ops/bench_cpu.py, runs taken in turn). So a
worker has ``ceil(threads / GROUP)`` clients, thread *i* uses client ``i mod n`` for its
whole life (its connections stay warm), and each pool holds every connection its threads
can use at once, all kept alive. The clients share one TLS context (``make``'s business,
farm.provider.messages.tls_context): each would otherwise hold its own copy of the CA
bundle, 0.77 MB.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable

import anthropic

GROUP = 10  # threads per client at most: the pool's scan and its lock's queue grow with it
SPARE = 8  # connections above a group's share: threads that are not task threads (batches)


class Clients:
    """``make(connections)`` builds one client whose pool holds ``connections``."""

    def __init__(self, make: Callable[[int], anthropic.Anthropic], threads: int,
                 group: int = GROUP) -> None:
        if threads < 1 or group < 1:
            raise ValueError(f"threads and group must be at least 1, not {threads}, {group}")
        count = math.ceil(threads / group)
        share = math.ceil(threads / count)
        self._all = tuple(make(share + SPARE) for _ in range(count))
        self._local = threading.local()
        self._turn = itertools.count()  # next() is atomic under the GIL

    def __len__(self) -> int:
        return len(self._all)

    @property
    def first(self) -> anthropic.Anthropic:
        """The client of anything that is not a job's call (the Message Batches loop)."""
        return self._all[0]

    def current(self) -> anthropic.Anthropic:
        """The calling thread's client: given on its first call, kept from then on."""
        client: anthropic.Anthropic | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._all[next(self._turn) % len(self._all)]
        return client

    def close(self) -> None:
        for client in self._all:
            client.close()
