"""Settings: built once at the edge (CLI, worker boot, client) and passed down.

Environment variables use the prefix ``FARM_``; the SDK's own ``ANTHROPIC_API_KEY`` and
``ANTHROPIC_BASE_URL`` are honoured as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from farm.broker.layout import INTAKE_QUEUE
from farm.capacity.config import ModelLimits
from farm.pool.slots import FIXED, SlotPolicy, parse_slots


class QueueSpec(BaseModel):
    """A specialization queue and the model its workers call."""

    model_config = ConfigDict(frozen=True)

    name: str
    model: str
    complexity: str  # "simple" | "complex"
    # serves this queue's fallback-enabled jobs while the model's circuit breaker is open
    fallback_model: str | None = None
    # the cost cap of this queue's jobs that set none (and whose tenant has none)
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    # escalation (farm.routing.escalation): a simple queue's jobs (escalate unset) whose
    # answer shows the model out of its depth run again on this queue; None: only jobs that
    # ask (escalate=True) escalate, to the first complex queue
    escalate_to: str | None = Field(default=None, min_length=1)
    # the elastic slots of this queue's workers (farm.pool.slots): "fixed" or a policy; None:
    # FARM_SLOTS
    slots: SlotPolicy | Literal["fixed"] | None = None
    # prompt caching of this queue's jobs that set no `cache` (farm.costs.prompt_cache):
    # "off", "5m" or "1h" TTL; None: FARM_PROMPT_CACHE
    prompt_cache: Literal["off", "5m", "1h"] | None = None
    # result memoization (farm.memo) of this queue's jobs that set no `memo`: True / False;
    # None: FARM_MEMO_TENANTS decides. memo_ttl_s: how old a reused answer may be (None:
    # FARM_MEMO_TTL_S)
    memo: bool | None = None
    memo_ttl_s: int | None = Field(default=None, ge=1, le=90 * 86_400)
    # Message Batches (farm.batches): True: this queue's jobs that say nothing wait for a
    # batch at half price; False: never; None: only jobs that ask, or whose deadline is far
    batch: bool | None = None


DEFAULT_QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(name="haiku-simple", model="claude-haiku-4-5", complexity="simple"),
    QueueSpec(name="sonnet-complex", model="claude-sonnet-5-5", complexity="complex",
              fallback_model="claude-haiku-4-5"),
)


def default_data_dir() -> Path:
    """Where the embedded servers live unless FARM_DATA_DIR says otherwise: one place per
    user, the same whatever the current directory, so every process of the user finds them
    (``$XDG_DATA_HOME/farm``, else ``~/.local/share/farm``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "farm"


def parse_band(value: Any) -> tuple[float, float] | None:
    """FARM_ROUTER_SECOND_OPINION: None or "" (off), "LO,HI" or a pair, 0 <= LO < HI <= 1.
    A ValueError names the variable and says what is accepted."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    usage = ("FARM_ROUTER_SECOND_OPINION must be empty (off) or 'LO,HI' with "
             "0 <= LO < HI <= 1, e.g. '0.35,0.65'")
    parts = value.split(",") if isinstance(value, str) else value
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{usage}; got {str(value)[:40]!r}") from None
    if not 0 <= low < high <= 1:  # NaN fails this too
        raise ValueError(f"{usage}; got {low:g},{high:g}")
    return low, high


def normalize_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and pin the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(
        "FARM_DATABASE_URL must be a postgresql:// or postgresql+psycopg:// URL, "
        f"got {url.split(':', 1)[0]}://…"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_", frozen=True, extra="ignore", populate_by_name=True
    )

    broker_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)

    queues: tuple[QueueSpec, ...] = DEFAULT_QUEUES

    # the SDK's own variables, read without the prefix
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "FARM_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "FARM_ANTHROPIC_BASE_URL")
    )
    # every provider call has a timeout (seconds)
    request_timeout: float = Field(default=120.0, gt=0, le=600)
    connect_timeout: float = Field(default=5.0, gt=0, le=60)

    # Celery task events feed Flower; they cost about 2.5 ms of worker CPU per job
    task_events: bool = True
    # a worker publishes its buffered task events every events_flush_s (farm.worker.event_step)
    # rather than on every turn of its loop; 0: Celery's own publishing
    events_flush_s: float = Field(default=0.1, ge=0, le=60)
    worker_concurrency: int = Field(default=100, ge=1, le=2000)
    worker_pool: str = Field(default="threads", pattern="^(threads|gevent|prefork|solo)$")
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # FARM_SLOTS: a worker process's elastic slots (farm.pool.slots) within its -c threads:
    # a JSON object of SlotPolicy fields, or "fixed" (None here: -c slots, always)
    slots: Annotated[SlotPolicy | None, NoDecode] = Field(default_factory=SlotPolicy)
    # a worker past this resident memory (MB) or this many jobs drains and exits 0, for its
    # supervisor to start a fresh one (farm.pool.recycle); 0: never
    worker_max_rss_mb: int = Field(default=0, ge=0, le=1_000_000)
    worker_max_jobs: int = Field(default=0, ge=0)
    # each worker process serves /livez and /readyz on the first free port of
    # [health_port, health_port + 63] on health_host (farm.pool.probes); 0: none
    health_port: int = Field(default=0, ge=0, le=65_535 - 63)
    health_host: str = "127.0.0.1"
    # a running job's lease: renewed by its worker every lease_s/4; once it runs out (the
    # worker died) any live worker re-queues the job, so it runs again within lease_s plus
    # reaper_interval_s
    lease_s: float = Field(default=40.0, ge=5, le=3600)
    reaper_interval_s: float = Field(default=5.0, gt=0, le=600)
    # a worker that has gone this share of lease_s without renewing a job's lease (a cut
    # network) abandons the job's call, before the lease can run out and the job run again
    lease_abandon_share: float = Field(default=0.75, gt=0, lt=1)
    # Postgres is the record of what must run: one worker of the cluster at a time, every
    # orphan_sweep_s, publishes again queued jobs whose message is nowhere in Redis (never
    # started after orphan_age_s, or due longer than lease_s ago)
    orphan_sweep_s: float = Field(default=30.0, gt=0, le=3600)
    orphan_age_s: float = Field(default=60.0, ge=1, le=86_400)
    # SIGTERM: running jobs get this long to finish; then they are handed back to the queue
    # and the worker exits (keep it under the orchestrator's kill timeout)
    shutdown_grace_s: float = Field(default=90.0, ge=0, le=3600)
    # a message delivered this often without its job finishing (it kills its worker, say)
    # is dead-lettered instead of looping forever
    max_deliveries: int = Field(default=5, ge=1, le=100)
    # while the farm is on hold (spend limit reached), a job is looked at again this often
    hold_recheck_s: float = Field(default=30.0, gt=0, le=3600)
    # how long a worker holds a finished call's result while Postgres is unreachable
    db_patience_s: float = Field(default=300.0, ge=0, le=86_400)
    # how long a job waits in its slot for an unreachable Redis before admission gives up
    # (the job then comes back through its lease)
    redis_patience_s: float = Field(default=30.0, ge=0, le=3600)

    # --- the provider's limits, kept cluster-wide (farm.capacity) -----------------------
    # per model: {"claude-sonnet-5-5": {"rpm": 600, "itpm": 400000, "otpm": 100000,
    # "max_concurrency": 200}}; a model not listed follows the provider's rate-limit headers
    limits: dict[str, ModelLimits] = Field(default_factory=dict)
    limit_target: float = Field(default=0.98, gt=0, le=1)  # share of each limit to use
    # a call may be scheduled this far ahead (the job sleeps in its slot until then)
    limit_max_delay_s: float = Field(default=2.0, ge=0, le=30)
    # pacing: each bucket holds this many seconds of its rate, so calls go out evenly; a
    # provider that enforces shorter intervals lowers it (to _MIN_BURST_S at least) and it
    # grows back over _BURST_PROBE_S
    limit_burst_s: float = Field(default=5.0, gt=0, le=60)
    limit_min_burst_s: float = Field(default=0.5, gt=0, le=60)
    limit_burst_probe_s: float = Field(default=60.0, gt=0, le=3600)
    # calls in flight to a model whose limits are not known yet (until its first answer)
    limit_discovery_slots: int = Field(default=1, ge=0, le=10_000)
    # a job sleeps in its slot for waits up to this long; longer waits are deferred (the job
    # goes back to the queue with a countdown, no attempt used)
    limit_sleep_s: float = Field(default=10.0, ge=0, le=300)
    # the longest countdown of a deferral (well under the broker's visibility timeout)
    defer_max_s: float = Field(default=60.0, gt=0, le=900)
    # a low-priority job waiting this long (since it was submitted) is served as high
    limit_max_wait_s: float = Field(default=120.0, gt=0)

    # --- circuit breaker per model, shared by every worker (farm.capacity) -------------
    breaker_failures: int = Field(default=5, ge=1, le=1000)  # in a row: opens
    breaker_cooldown_s: float = Field(default=15.0, gt=0, le=3600)
    breaker_max_cooldown_s: float = Field(default=120.0, gt=0, le=86_400)

    # --- alert thresholds (farm.observe.rules): the Prometheus rule file and `farm alerts`
    # both read these, and nothing else
    alert_queue_depth: int = Field(default=500, ge=1)  # messages in one queue
    alert_error_rate: float = Field(default=0.02, gt=0, lt=1)  # failed+dead share, 5 min
    alert_p95_s: float = Field(default=30.0, gt=0, le=86_400)  # job P95, 5 min
    alert_utilisation: float = Field(default=0.9, gt=0, le=1)  # busy / slots of a queue
    alert_circuit_open_s: float = Field(default=600.0, ge=0, le=86_400)
    alert_cost_usd_per_hour: float = Field(default=50.0, gt=0)
    # how long the queue depth, error rate, P95 and utilisation must stay over their
    # thresholds before their alert fires (Prometheus's `for:`)
    alert_for_s: float = Field(default=300.0, ge=0, le=86_400)

    # --- cost controls (farm.costs) ---------------------------------------------------
    # the most one job may cost over all its calls, unless the job, its tenant
    # (tenant_max_cost_usd) or its queue (QueueSpec.max_cost_usd) says otherwise
    max_cost_usd: Decimal = Field(default=Decimal("2.00"), gt=0)
    tenant_max_cost_usd: dict[str, Decimal] = Field(default_factory=dict)
    # the cost circuit breaker: spend over the last cost_breaker_window_s, in USD a minute,
    # overall and per model; at or above it no call is admitted until it falls under
    # cost_breaker_close_share of it. None / {}: no breaker
    cost_breaker_usd_per_min: Decimal | None = Field(default=None, gt=0)
    cost_breaker_model_usd_per_min: dict[str, Decimal] = Field(default_factory=dict)
    cost_breaker_window_s: float = Field(default=60.0, ge=5, le=3600)
    cost_breaker_close_share: float = Field(default=0.8, gt=0, le=1)
    # FARM_PROMPT_CACHE: prompt caching of the stable prefix (tools, system, documents) of
    # jobs whose request and queue say nothing (farm.costs.prompt_cache): "5m" or "1h"
    # TTL, or "off"
    prompt_cache: Literal["off", "5m", "1h"] = "5m"
    # --- result memoization (farm.memo) -------------------------------------------------
    # FARM_MEMO_TENANTS: tenants whose jobs memoize unless the job or its queue says (comma
    # list); FARM_MEMO_TTL_S: how old a reused answer may be unless the job or queue says;
    # FARM_MEMO_WAIT_S: how long a job waits for an identical one in flight, then calls
    memo_tenants: Annotated[tuple[str, ...], NoDecode] = ()
    memo_ttl_s: int = Field(default=86_400, ge=1, le=90 * 86_400)
    memo_wait_s: float = Field(default=120.0, gt=0, le=3600)

    # --- Message Batches (farm.batches): half price, answered within 24 h -------------
    # a job whose deadline is at least this far away goes into a batch (unless batch=False)
    batch_deadline_s: float = Field(default=86_400.0, gt=0)
    # a model's waiting jobs are sent as a batch once this many wait (the API's limit per
    # batch: 10,000 requests and 256 MB; a larger flush is split), or once the oldest has
    # waited batch_max_age_s
    batch_max_requests: int = Field(default=10_000, ge=1, le=10_000)
    batch_max_bytes: int = Field(default=256_000_000, ge=10_000, le=256_000_000)
    batch_max_age_s: float = Field(default=60.0, ge=0, le=86_400)
    # a batch in flight is polled after batch_poll_s, then twice as long each time, up to
    # batch_poll_max_s; the worker's batch loop looks for work every batch_tick_s
    batch_poll_s: float = Field(default=10.0, gt=0, le=3600)
    batch_poll_max_s: float = Field(default=300.0, gt=0, le=86_400)
    batch_tick_s: float = Field(default=2.0, gt=0, le=600)
    # a batch whose creator died while creating it is looked for at the provider; when none
    # is found this long after, its jobs wait for a later batch
    batch_reconcile_s: float = Field(default=120.0, ge=0, le=86_400)

    # --- routing (farm.routing) ------------------------------------------------------
    # escalation's signal (a): a simple model that stops at max_tokens escalates only when
    # the job's max_tokens is at most this (it expected a short answer)
    escalate_short_budget: int = Field(default=1024, ge=1, le=64_000)
    # FARM_ROUTER_SECOND_OPINION: "LO,HI" (0 <= LO < HI <= 1), the band of the classifier's
    # score whose jobs go to the simple queue with a second opinion first; empty: off
    router_second_opinion: Annotated[tuple[float, float] | None, NoDecode] = None

    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_port: int = 5555

    sim_port: int = 8787

    # each worker process serves /metrics on the first free port of [metrics_port,
    # metrics_port + 63] on metrics_host (farm.observe.server); 0: no metrics
    metrics_port: int = Field(default=0, ge=0, le=65_535 - 63)
    metrics_host: str = "127.0.0.1"

    @field_validator("limit_min_burst_s")
    @classmethod
    def _min_burst(cls, value: float, info: ValidationInfo) -> float:
        burst = info.data.get("limit_burst_s")
        if burst is not None and value > burst:
            raise ValueError(f"FARM_LIMIT_MIN_BURST_S ({value:g}) must not exceed "
                             f"FARM_LIMIT_BURST_S ({burst:g})")
        return value

    @field_validator("slots", mode="before")
    @classmethod
    def _slots(cls, value: Any) -> SlotPolicy | None:
        return parse_slots(value)

    @field_validator("memo_tenants", mode="before")
    @classmethod
    def _tenant_list(cls, value: Any) -> tuple[str, ...]:
        parts = value.split(",") if isinstance(value, str) else (value or ())
        return tuple(p.strip() for p in parts if str(p).strip())

    @field_validator("router_second_opinion", mode="before")
    @classmethod
    def _band(cls, value: Any) -> tuple[float, float] | None:
        return parse_band(value)

    @model_validator(mode="after")
    def _escalate_to_known(self) -> Settings:
        names = self.queue_names
        for spec in self.queues:
            if spec.escalate_to is not None and (spec.escalate_to not in names
                                                 or spec.escalate_to == spec.name):
                raise ValueError(
                    f"FARM_QUEUES: queue {spec.name!r} escalates to {spec.escalate_to!r}, "
                    f"which is {'itself' if spec.escalate_to == spec.name else 'not configured'}"
                    f"; configured: {', '.join(names)}")
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # a relative FARM_DATA_DIR means the folder where this process started: made absolute
        # once, so that everything the process hands it to agrees
        return value.expanduser().absolute()

    @field_validator("database_url")
    @classmethod
    def _normalize_db(cls, value: str | None) -> str | None:
        return None if value in (None, "") else normalize_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://", "valkey://")):
            raise ValueError("FARM_BROKER_URL must be a redis:// or rediss:// URL")
        return value.replace("valkey://", "redis://", 1)

    @property
    def queue_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.queues)

    def slot_policy(self, queues: Sequence[str], threads: int) -> SlotPolicy:
        """The slots of a worker process of ``threads`` threads consuming ``queues``: their
        policy (FARM_SLOTS unless a queue has its own) within the threads. ValueError when the
        queues disagree: one process has one number of slots."""
        own = {spec.name: spec.slots for spec in self.queues}
        chosen: dict[str, SlotPolicy | None] = {}
        for queue in queues:
            found = own.get(queue)
            chosen[queue] = (self.slots if found is None
                             else None if found == FIXED else found)  # type: ignore[assignment]
        policies = set(chosen.values())
        if len(policies) > 1:
            raise ValueError(
                f"queues {', '.join(sorted(chosen))} have different slot policies "
                "(FARM_QUEUES' slots, FARM_SLOTS): run them in separate workers")
        policy = next(iter(policies), self.slots)
        return SlotPolicy.pinned(threads) if policy is None else policy.within(threads)

    @property
    def servable_queues(self) -> tuple[str, ...]:
        """The specialization queues and the intake queue: what a worker may consume."""
        return (*self.queue_names, INTAKE_QUEUE)
