"""A Snapshot of the farm taken without Prometheus, from Redis and Postgres; read only (two
exporters, `farm alerts` and `farm top` may take them at once).

Queue depth, per queue: the lengths of its Redis lists (one per priority step,
``farm.broker.layout.queue_keys``) plus the messages a worker took and has not acknowledged
(kombu's ``unacked`` hash, whose values are ``[message, exchange, routing key]``): prefetched,
running, and delayed — Celery on Redis keeps a message with an ETA (a retry's or a
deferral's countdown) in the worker that took it, hence in that hash, until it is due.
Pool utilisation comes from the workers' heartbeats (``farm:pool:<host>:<pid>``: queue →
``"<slots> <busy>"``). Everything else is Postgres (jobs, attempts) and the capacity state
(breakers, limiter, hold flag).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from farm.broker import layout
from farm.broker.layout import UNACKED, queue_keys
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import BreakerState
from farm.capacity.limiter import Limiter
from farm.observe import heartbeat, spend
from farm.observe.figures import (
    COST_WINDOW_S,
    WINDOW_S,
    BudgetFigures,
    Circuit,
    Hold,
    LimiterUse,
    QueueFigures,
    Snapshot,
    Window,
)
from farm.reliability import hold as farm_hold
from farm.settings import Settings
from farm.store.db import Database

UNACKED_MAX = 100_000  # more unacknowledged messages than this are not read one by one
# the window figures read jobs created at most this long before the window (an index scan
# on jobs.created_at): a job finished after waiting longer is left out of them
HORIZON_S = 86_400.0
STATEMENT_TIMEOUT_MS = 5000


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def models_of(settings: Settings, seen: Iterable[str] = ()) -> list[str]:
    """The models the farm calls: its queues', their fallbacks, FARM_LIMITS's, and those
    the limiter has seen."""
    models = {q.model for q in settings.queues}
    models |= {q.fallback_model for q in settings.queues if q.fallback_model}
    return sorted(models | set(settings.limits) | set(seen))


# --- Redis ------------------------------------------------------------------------------

def queue_lengths(broker: Any, queues: Iterable[str]) -> dict[str, int]:
    """Each queue's messages in its Redis lists, every priority step (one round trip)."""
    names = list(queues)
    lengths = layout.list_lengths(broker, [key for q in names for key in queue_keys(q)])
    steps = len(layout.PRIORITY_STEPS)
    return {q: sum(lengths[i * steps:(i + 1) * steps]) for i, q in enumerate(names)}


def _eta(message: Any) -> float | None:
    """A message's ETA (unix time), None when it has none."""
    try:
        eta = message.get("headers", {}).get("eta")
        return datetime.fromisoformat(eta).timestamp() if eta else None
    except (ValueError, TypeError, AttributeError):
        return None


def unacked_counts(broker: Any, now: float, *, limit: int = UNACKED_MAX
                   ) -> tuple[dict[str, int], dict[str, int], bool]:
    """(unacknowledged, of which delayed) per routing key (= queue), and whether the hash
    held more than ``limit`` entries (then only the first ``limit`` were read)."""
    unacked: dict[str, int] = {}
    delayed: dict[str, int] = {}
    seen = 0
    for _, raw in broker.hscan_iter(UNACKED, count=1000):
        seen += 1
        if seen > limit:
            return unacked, delayed, True
        try:
            message, _, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        queue = _text(routing_key)
        unacked[queue] = unacked.get(queue, 0) + 1
        eta = _eta(message)
        if eta is not None and eta > now:
            delayed[queue] = delayed.get(queue, 0) + 1
    return unacked, delayed, False


def pool_use(broker: Any) -> dict[str, tuple[int, int]]:
    """(slots, busy) per queue, summed over the live workers' heartbeats."""
    keys = list(broker.scan_iter(match=f"{heartbeat.PREFIX}*", count=1000))
    pipe = broker.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    totals: dict[str, tuple[int, int]] = {}
    for fields in pipe.execute() if keys else ():
        for queue, (slots, busy) in heartbeat.parse(fields)[0].items():
            have = totals.get(queue, (0, 0))
            totals[queue] = (have[0] + slots, have[1] + busy)
    return totals


def circuit(breaker: Breaker, model: str) -> Circuit:
    value, _ = breaker.value(model)
    if value.state is BreakerState.CLOSED:
        return Circuit(model, value.state.value)
    c = breaker.config
    earlier = sum(min(c.max_cooldown_s, c.cooldown_s * 2 ** i) for i in range(value.reopens))
    return Circuit(model, value.state.value, value.opened_at, value.opened_at - earlier)


def limiter_use(limiter: Limiter, model: str) -> list[LimiterUse]:
    """The share of each effective limit in use now: 1 - left/bucket for the rates (the
    bucket holds burst_s seconds of the rate: farm.capacity.pacing), in-flight/slots for the
    concurrency (limits the model does not have are left out)."""
    snap = limiter.snapshot(model)
    uses = []
    for kind in ("rpm", "itpm", "otpm"):
        cap, left = snap["bucket"].get(kind), snap["levels"].get(kind)
        if cap and left is not None:
            uses.append(LimiterUse(model, kind, max(0.0, min(1.0, 1 - float(left) / cap))))
    slots = snap["effective"].get("max_concurrency")
    if slots and not snap.get("discovering"):  # a model not called yet: no limit to use
        uses.append(LimiterUse(model, "concurrency", snap["in_flight"] / slots))
    return uses


# --- Postgres ---------------------------------------------------------------------------

QUEUED_SQL = """
    SELECT queue, count(*) AS jobs, extract(epoch FROM now() - min(created_at)) AS oldest_s
    FROM jobs WHERE status = 'queued' GROUP BY queue"""
STATUS_SQL = "SELECT status, count(*) FROM jobs GROUP BY status"
WINDOW_SQL = """
    SELECT queue, count(*) AS finished,
           count(*) FILTER (WHERE status IN ('failed', 'dead')) AS failed,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
               (ORDER BY extract(epoch FROM finished_at - created_at)) AS pct
    FROM jobs
    WHERE status IN ('succeeded', 'failed', 'dead')
      AND finished_at >= now() - make_interval(secs => %(window)s)
      AND created_at >= now() - make_interval(secs => %(window)s + %(horizon)s)
    GROUP BY GROUPING SETS ((queue), ())"""
COST_SQL = """
    SELECT model, coalesce(sum(cost_usd), 0) AS usd FROM attempts
    WHERE finished_at >= now() - make_interval(secs => %(window)s)
      AND started_at >= now() - make_interval(secs => %(window)s + %(horizon)s)
    GROUP BY model"""


def _window(row: Any) -> Window:
    pct = list(row.pct or (None, None, None))
    return Window(int(row.finished), int(row.failed), *(None if p is None else float(p)
                                                       for p in pct))


def from_postgres(db: Database, *, window_s: float = WINDOW_S,
                  cost_window_s: float = COST_WINDOW_S) -> dict[str, Any]:
    """The Postgres figures, in one read-only transaction with a statement timeout."""
    with db.connect() as conn, conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        queued = {r.queue: (int(r.jobs), float(r.oldest_s))
                  for r in conn.execute(QUEUED_SQL)}
        statuses = tuple(sorted((str(s), int(n)) for s, n in conn.execute(STATUS_SQL)))
        windows, total = {}, Window()
        for row in conn.execute(WINDOW_SQL, {"window": window_s, "horizon": HORIZON_S}):
            if row.queue is None:
                total = _window(row)
            else:
                windows[row.queue] = _window(row)
        cost = {str(r.model): float(r.usd) for r in conn.execute(
            COST_SQL, {"window": cost_window_s, "horizon": 3600.0})}
    return {"queued": queued, "statuses": statuses, "windows": windows, "total": total,
            "cost": cost, "cost_per_hour": sum(cost.values()) * 3600.0 / cost_window_s}


# --- together ---------------------------------------------------------------------------

def _problem(source: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{source}: {type(exc).__name__}: {first}"


def take(*, broker: Any, db: Database | None, queues: Iterable[str], models: Iterable[str],
         breaker: Breaker, limiter: Limiter, now: float | None = None,
         costs: Settings | None = None) -> Snapshot:
    """One snapshot. A source that fails leaves its figures out and names itself in
    ``problems`` (Postgres down: no job figures, no budgets; the Redis ones are still
    there). Redis errors propagate: without the broker there is nothing to show. With
    ``costs`` (the settings naming the cost breakers), the budgets and cost breakers too
    (farm.observe.spend)."""
    now = time.time() if now is None else now
    names = list(queues)
    problems: list[str] = []
    lengths = queue_lengths(broker, names)
    unacked, delayed, cut = unacked_counts(broker, now)
    if cut:
        problems.append(f"more than {UNACKED_MAX} unacknowledged messages: depth is a floor")
    pools = pool_use(broker)
    model_list = list(models)
    circuits = tuple(circuit(breaker, m) for m in model_list)
    limiters = tuple(u for m in model_list for u in limiter_use(limiter, m))
    flag = farm_hold.current(broker)
    held = None if flag is None else Hold(str(flag.get("reason")), flag.get("since"))
    found: dict[str, Any] = {"queued": {}, "statuses": (), "windows": {}, "total": Window(),
                             "cost": {}, "cost_per_hour": 0.0}
    if db is not None:
        try:
            found = from_postgres(db)
        except Exception as exc:  # the broker's figures are still worth showing
            problems.append(_problem("Postgres", exc))
    budgets: tuple[BudgetFigures, ...] = ()
    if costs is not None and db is not None and not any(
            p.startswith("Postgres") for p in problems):  # Postgres keeps the budgets
        try:
            budgets = spend.budgets(broker, db)
        except Exception as exc:  # the other figures are still worth showing
            problems.append(_problem("budgets", exc))
    breakers = () if costs is None else spend.cost_breakers(broker, costs)
    figures = []
    for q in names:
        jobs, oldest = found["queued"].get(q, (0, None))
        slots, busy = pools.get(q, (0, 0))
        figures.append(QueueFigures(
            q, waiting=lengths[q], unacked=unacked.get(q, 0), delayed=delayed.get(q, 0),
            queued_jobs=jobs, oldest_wait_s=oldest, slots=slots, busy=busy,
            window=found["windows"].get(q, Window())))
    return Snapshot(
        taken_at=now, queues=tuple(figures), jobs_by_status=found["statuses"], total=found["total"],
        circuits=circuits, limiters=limiters, hold=held,
        cost_usd_per_hour=found["cost_per_hour"],
        cost_by_model=tuple(sorted(found["cost"].items())), budgets=budgets,
        cost_breakers=breakers, problems=tuple(problems))


def take_for(settings: Settings, broker: Any, db: Database | None) -> Snapshot:
    """A snapshot of the farm these settings describe (its queues and models)."""
    from farm.capacity.build import redis_breaker, redis_limiter

    limiter = redis_limiter(broker, settings)
    return take(broker=broker, db=db, queues=settings.servable_queues,
                models=models_of(settings, limiter.models()),
                breaker=redis_breaker(broker, settings), limiter=limiter, costs=settings)
