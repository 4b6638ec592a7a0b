"""Per-process resources of a worker: built once from settings, shared by all threads."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import anthropic

from farm.broker.connections import worker_client
from farm.broker.layout import DEAD_LETTER_QUEUE
from farm.capacity.admission import Gate
from farm.capacity.build import redis_gate
from farm.costs.pricing import PriceBook, default_pricebook
from farm.memo.inflight import InFlight
from farm.provider.abort import Calls
from farm.provider.clients import Clients
from farm.provider.messages import make_client, tls_context
from farm.reliability.hold import HoldCheck
from farm.reliability.leases import Republish, Running
from farm.reliability.loops import start_threads
from farm.reliability.policies import RetryPolicy, policy_for
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.db import Database


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    db: Database
    client: anthropic.Anthropic
    prices: PriceBook
    policies: Mapping[str, RetryPolicy]
    running: Running
    stop: threading.Event
    hold: HoldCheck
    gate: Gate
    # memoization's in-flight marks (farm.memo.inflight); None: identical jobs do not wait
    inflight: InFlight | None = None
    # the jobs' SDK clients, a group of threads each (farm.provider.clients); None: `client`
    clients: Clients | None = None

    def policy(self, queue: str) -> RetryPolicy:
        return policy_for(self.policies, queue)

    def sdk(self) -> anthropic.Anthropic:
        """The calling thread's SDK client for a job's call."""
        return self.client if self.clients is None else self.clients.current()


_lock = threading.Lock()
WORKER_POOL_FACTOR = 3  # Postgres connections a worker may hold, per FARM_DB_POOL_SIZE

_runtime: Runtime | None = None
_threads: int | None = None  # the worker's real concurrency (`-c`), once Celery has it


def size(threads: int | None) -> None:
    """The worker runs ``threads`` task threads (its `-c`, told at worker_init): the pools
    are sized from it, not from FARM_WORKER_CONCURRENCY, which `celery -A farm worker -c N`
    does not set (a 1,000-thread worker kept 100 calls in flight)."""
    global _threads
    _threads = threads


def build(settings: Settings, policies: Mapping[str, RetryPolicy],
          republish: Republish | None = None) -> Runtime:
    if _threads is not None and _threads != settings.worker_concurrency:
        settings = settings.model_copy(update={"worker_concurrency": _threads})
    urls = resolve_urls(settings)
    pool = settings.db_pool_size
    # the hold flag, leases, the orphan sweep, the limiter and the breaker: one client, whose
    # pool grows to one connection per thread that uses it at the same time
    # (redis-py's default pool holds 100 connections: fewer than the threads of a big worker)
    # (farm.broker.connections: fewer system calls a command than redis-py's own)
    broker = worker_client(urls.broker_url, max_connections=settings.worker_concurrency + 32)
    calls = Calls()  # the lease watchdog stops a call through it
    tls = tls_context()  # one for all the clients: each context holds the CA bundle
    clients = Clients(lambda connections: make_client(settings, calls, connections, tls),
                      settings.worker_concurrency)
    # Every worker statement stands alone (db.connect(), autocommit): no BEGIN/COMMIT round
    # trips. Up to 3x FARM_DB_POOL_SIZE connections, opened as the threads need them and
    # kept. An overflow connection (SQLAlchemy's pool_size=pool, max_overflow=2*pool, before)
    # is closed when it is checked in to a full pool: in the CPU-bound bench 13 new backends
    # and logins a second, Postgres at 3.2-4.0 ms of CPU per job; kept, 1.1 ms. No ping
    # before use: a dead connection raises, is discarded, and the store's retry takes another
    db = Database(urls.database_url, size=pool * WORKER_POOL_FACTOR, ping_s=None)
    runtime = Runtime(
        settings=settings,
        db=db,
        client=clients.first,
        clients=clients,
        prices=default_pricebook(),
        policies=policies,
        running=Running(abort=calls.abandon, clear=calls.clear, sent=calls.sent),
        stop=threading.Event(),
        hold=HoldCheck(broker, every_s=min(2.0, settings.hold_recheck_s)),
        gate=redis_gate(broker, settings, db),
        inflight=InFlight(broker, wait_s=settings.memo_wait_s),
    )
    if republish is not None:
        start_threads(runtime.db, runtime.running, republish, lease_s=settings.lease_s,
                      reaper_interval_s=settings.reaper_interval_s, stop=runtime.stop,
                      broker=broker, orphan_sweep_s=settings.orphan_sweep_s,
                      orphan_age_s=settings.orphan_age_s,
                      abandon_share=settings.lease_abandon_share,
                      consumed=(*settings.servable_queues, DEAD_LETTER_QUEUE))
    return runtime


def get(settings: Settings, policies: Mapping[str, RetryPolicy],
        republish: Republish | None = None) -> Runtime:
    """The process's runtime; the first call builds it (and, given `republish`, starts the
    lease-renewal and reaper threads)."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build(settings, policies, republish)
    return _runtime


def current() -> Runtime | None:
    """The process's runtime if it is built (the per-task fast path)."""
    return _runtime


def reset() -> None:
    """Drop the process's runtime (after fork, or in tests)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.stop.set()
            _runtime.db.close()
            (_runtime.clients or _runtime.client).close()
        _runtime = None
