"""The figures the alerts and `farm top` need, as one frozen value (``Snapshot``), taken
without Prometheus by ``farm.observe.snapshot.take``. Pure: values and arithmetic only."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

WINDOW_S = 300.0  # error rate, throughput and percentiles: the last 5 minutes
COST_WINDOW_S = 3600.0  # cost rate: the last hour


@dataclass(frozen=True)
class Window:
    """Jobs finished (succeeded, failed or dead) in the window and their durations, created
    to finished (seconds)."""

    finished: int = 0
    failed: int = 0  # failed or dead
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    waiting: int = 0  # in the queue's Redis lists, every priority step
    unacked: int = 0  # taken by a worker and not acknowledged (prefetched, running, delayed)
    delayed: int = 0  # of the unacknowledged: waiting for their ETA (retry, deferral)
    queued_jobs: int = 0  # jobs queued in Postgres
    oldest_wait_s: float | None = None  # age of the oldest queued job
    slots: int = 0  # worker slots serving the queue (pool heartbeats)
    busy: int = 0
    window: Window = Window()

    @property
    def depth(self) -> int:
        """Every priority list, delayed and unacknowledged message."""
        return self.waiting + self.unacked

    @property
    def demand(self) -> int:
        """Jobs that hold or want a worker slot: every priority list and the unacknowledged
        messages not waiting for an ETA (the pod autoscaler's signal, ops/k8s)."""
        return self.waiting + max(0, self.unacked - self.delayed)

    @property
    def utilisation(self) -> float | None:
        return self.busy / self.slots if self.slots else None


@dataclass(frozen=True)
class Circuit:
    model: str
    state: str  # closed | open | half_open
    opened_at: float | None = None  # its last opening (Redis time)
    # since when it has not been closed, at least: the last opening less the cooldowns of
    # the re-openings before it (each lasted at least its cooldown)
    not_closed_since: float | None = None

    @property
    def open(self) -> bool:
        return self.state != "closed"


@dataclass(frozen=True)
class LimiterUse:
    model: str
    kind: str  # rpm | itpm | otpm | concurrency
    ratio: float  # of the effective limit in use (1 = at the limit)


@dataclass(frozen=True)
class Hold:
    reason: str
    since: float | None


@dataclass(frozen=True)
class BudgetFigures:
    """A budget in its current period (USD). ``alert_share``: where it alerts (a soft
    budget's always, a hard one's when set); a hard budget alerts at its limit anyway."""

    budget: str  # its id: global:day, tenant:search:day, ...
    scope: str  # global | tenant | queue | model
    period: str  # hour | day | month
    mode: str  # hard | soft
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal = Decimal(0)
    alert_share: float | None = None
    refusing: bool = False  # turned a call away as spent lately (farm.costs.controls)

    @property
    def used(self) -> float:
        """Spent over the limit (reservations of calls in flight left out)."""
        return float(self.spent_usd / self.limit_usd)

    @property
    def alerting(self) -> bool:
        return self.alert_share is not None and self.used >= self.alert_share

    @property
    def exhausted(self) -> bool:
        """A hard budget that stops calls: spent, or turning calls away (their worst case
        does not fit what is left)."""
        return self.mode == "hard" and (self.spent_usd >= self.limit_usd or self.refusing)


@dataclass(frozen=True)
class CostBreaker:
    """The cost circuit breaker of a scope ('all' or a model): its spend rate over its window
    and its threshold (USD a minute), whether it is open and since when (Redis time)."""

    scope: str
    rate_usd_per_min: Decimal
    threshold_usd_per_min: Decimal
    open: bool = False
    opened_at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # unix time
    queues: tuple[QueueFigures, ...] = ()
    jobs_by_status: tuple[tuple[str, int], ...] = ()
    total: Window = Window()
    circuits: tuple[Circuit, ...] = ()
    limiters: tuple[LimiterUse, ...] = ()
    hold: Hold | None = None
    cost_usd_per_hour: float = 0.0  # the last hour's spend
    cost_by_model: tuple[tuple[str, float], ...] = ()
    budgets: tuple[BudgetFigures, ...] = ()
    cost_breakers: tuple[CostBreaker, ...] = ()
    window_s: float = WINDOW_S
    # what could not be read (a source down or too slow): its figures are missing
    problems: tuple[str, ...] = ()

    def queue(self, name: str) -> QueueFigures | None:
        return next((q for q in self.queues if q.queue == name), None)

    @property
    def throughput_per_s(self) -> float:
        return self.total.finished / self.window_s
