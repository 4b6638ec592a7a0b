"""The simulator's configuration (``SimConfig``: fixed at start, RUNTIME_FIELDS changeable
through ``POST /_sim/config``) and its mutable state (``SimState``: counters, the bill,
rate-limit buckets, the prompt cache, the message batches), held by the aiohttp app.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pydantic
from aiohttp import web

from farm.sim import limits as lim
from farm.sim.batch_wire import Batch
from farm.sim.billing import bill, usd
from farm.sim.limits import TokenBucket


class SimConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8787
    ttft_s: float = pydantic.Field(0.2, ge=0)
    output_tokens_per_s: float = pydantic.Field(200.0, gt=0)
    fixed_latency_s: float | None = pydantic.Field(None, ge=0)
    rpm_limit: int | None = pydantic.Field(None, ge=1)
    itpm_limit: int | None = pydantic.Field(None, ge=1)
    otpm_limit: int | None = pydantic.Field(None, ge=1)
    burst_s: float | None = pydantic.Field(None, gt=0, le=60)  # None: full-minute buckets
    fault_529_rate: float = pydantic.Field(0.0, ge=0, le=1)
    fault_500_rate: float = pydantic.Field(0.0, ge=0, le=1)
    overload_until: float | None = None  # every model answers 529 until then (epoch s)
    overload_models: dict[str, float] = pydantic.Field(default_factory=dict)  # model → until
    model_limits: dict[str, dict[str, int]] = pydantic.Field(default_factory=dict)
    seed: int = 0
    require_api_key: bool = True
    # [[sim:weak=…]] applies to models whose id contains one of these (farm.sim.answers)
    weak_models: tuple[str, ...] = ("haiku",)
    # a new message batch ends this long after its creation (farm.sim.batch_wire)
    batch_processing_s: float = pydantic.Field(2.0, ge=0)

    _check_limits = pydantic.field_validator("model_limits", mode="before")(lim.check_model_limits)

    def overloaded(self, model: str, now: float) -> bool:
        return max(self.overload_until or 0.0, self.overload_models.get(model, 0.0)) > now


RUNTIME_FIELDS = frozenset(SimConfig.model_fields) - {"host", "port"}
STATS = ("requests_total", "messages_requests", "count_tokens_requests", "successful_calls",
         "streamed_calls", "input_tokens", "output_tokens", "in_flight", "max_in_flight")
BATCH_STATS = ("created", "requests", "succeeded", "errored", "expired", "canceled")


class SimState:
    """The app's mutable holder: current config, counters, the bill, rate-limit buckets,
    prompt cache, message batches (with the tasks processing them)."""

    def __init__(self, config: SimConfig) -> None:
        self.config, self.counts = config, Counter[str]()
        self.batch_tasks: set[asyncio.Task[None]] = set()
        self.reset()

    def reset(self) -> None:
        self.counts = Counter({**dict.fromkeys(STATS, 0), "in_flight": self.counts["in_flight"]})
        self.by_status, self.by_model = Counter[int](), Counter[str]()
        self.ok_by_model, self.cache = Counter[str](), dict[str, float]()
        self.limited_by_model, self.overloaded_by_model = Counter[str](), Counter[str]()
        self.rng = random.Random(self.config.seed)
        self.buckets: dict[str, dict[str, TokenBucket]] = {}
        for task in self.batch_tasks:
            task.cancel()
        self.batch_tasks = set()
        self.batches: dict[str, Batch] = {}  # oldest first
        self.batch_counts = Counter(dict.fromkeys(BATCH_STATS, 0))
        self.billed, self.billed_batch = Decimal(0), Decimal(0)

    def buckets_for(self, model: str, now: float) -> dict[str, TokenBucket]:
        if model not in self.buckets:
            c = self.config
            default = {"rpm": c.rpm_limit, "itpm": c.itpm_limit, "otpm": c.otpm_limit}
            limits = lim.limits_for(model, c.model_limits, default)
            self.buckets[model] = lim.make_buckets(limits, now, c.burst_s)
        return self.buckets[model]

    def count_error(self, model: str, status: int) -> None:
        if status == 429:
            self.limited_by_model[model] += 1
        elif status == 529:
            self.overloaded_by_model[model] += 1

    def charge(self, model: str, usage: dict[str, Any]) -> None:
        """Add one synchronous message to the bill, at list price (unpriced models: nothing)."""
        if (amount := bill(model, usage)) is not None:
            self.billed += amount

    def count_batch(self, found: Counter[str], amount: Decimal) -> None:
        """An ended batch: its results by type, and what its succeeded ones cost."""
        self.batch_counts.update(found)
        self.billed += amount
        self.billed_batch += amount

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "by_status": self.by_status, "by_model": self.by_model,
                "successful_by_model": self.ok_by_model,
                "rate_limited_by_model": self.limited_by_model,
                "overloaded_by_model": self.overloaded_by_model,
                "billed_usd": usd(self.billed), "billed_batch_usd": usd(self.billed_batch),
                "batches": dict(self.batch_counts)}


STATE = web.AppKey("farm_sim_state", SimState)
