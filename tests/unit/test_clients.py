"""A worker's SDK clients (farm.provider.clients): one per group of threads, each thread
keeping the one it was given, each pool holding its threads' connections."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from farm.provider.clients import GROUP, SPARE, Clients


class _Client:
    def __init__(self, connections: int) -> None:
        self.connections, self.closed = connections, False

    def close(self) -> None:
        self.closed = True


def _clients(threads: int, group: int = GROUP) -> tuple[Clients, list[_Client]]:
    made: list[_Client] = []

    def make(connections: int) -> Any:
        made.append(_Client(connections))
        return made[-1]

    return Clients(make, threads, group), made


@pytest.mark.parametrize(("threads", "group", "count", "share"), [
    (1, 32, 1, 1), (32, 32, 1, 32), (33, 32, 2, 17), (100, 32, 4, 25), (1000, 32, 32, 32),
    (1000, 100, 10, 100), (2000, 32, 63, 32),
])
def test_one_client_per_group_each_pool_holding_its_share(threads: int, group: int, count: int,
                                                         share: int) -> None:
    clients, made = _clients(threads, group)
    assert len(clients) == len(made) == count
    assert {c.connections for c in made} == {share + SPARE}
    assert count * share >= threads  # every thread has a connection of its own


def test_each_thread_keeps_its_client_and_threads_spread_evenly() -> None:
    clients, made = _clients(8, group=2)  # 4 clients
    seen: dict[int, list[Any]] = {}
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()  # all eight alive at once: no thread ident is reused
        seen[i] = [clients.current() for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len({id(c) for c in got}) == 1 for got in seen.values())  # kept
    per_client = [sum(got[0] is c for got in seen.values()) for c in made]
    assert per_client == [2, 2, 2, 2]
    assert clients.first is made[0]


def test_close_closes_them_all() -> None:
    clients, made = _clients(100, group=32)
    clients.close()
    assert all(c.closed for c in made)


@pytest.mark.parametrize(("threads", "group"), [(0, 32), (10, 0)])
def test_bad_sizes_are_refused(threads: int, group: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _clients(threads, group)


class _Controller:
    def __init__(self, concurrency: object, pool_cls: object) -> None:
        self.concurrency, self.pool_cls = concurrency, pool_cls


@pytest.mark.parametrize(("concurrency", "pool", "threads"), [
    (1000, "threads", 1000), (8, "solo", 8), (300, "gevent", 300),
    (4, "prefork", None), (4, "processes", None), ("auto", "threads", None), (0, "threads", None),
])
def test_a_worker_sizes_its_pools_from_its_own_concurrency(concurrency: object, pool: str,
                                                           threads: int | None) -> None:
    from farm.worker.lifecycle import threads_of

    assert threads_of(_Controller(concurrency, pool)) == threads
