"""The limiter's configuration: each model's provider limits and the shared knobs (target,
pacing, reserves, concurrency shares, tenant window, waits). Validated once, frozen; the
arithmetic that uses it is ``farm.capacity.limits``."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.jobs import Priority

DEFAULT_RESERVE = {Priority.HIGH: 0.0, Priority.NORMAL: 0.05, Priority.LOW: 0.20}
DEFAULT_SHARE = {Priority.HIGH: 1.0, Priority.NORMAL: 0.95, Priority.LOW: 0.80}


class ModelLimits(BaseModel):
    """One model's provider limits; None means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    itpm: int | None = Field(default=None, gt=0)
    otpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)

    def rate(self, kind: str) -> int | None:
        value: int | None = getattr(self, kind)
        return value


NO_LIMITS = ModelLimits()


class LimiterConfig(BaseModel):
    """The limiter's configuration, shared by every worker (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: dict[str, ModelLimits] = Field(default_factory=dict)
    target: float = Field(default=0.98, gt=0, le=1)
    reserve: dict[Priority, float] = Field(default_factory=lambda: dict(DEFAULT_RESERVE))
    concurrency_share: dict[Priority, float] = Field(default_factory=lambda: dict(DEFAULT_SHARE))
    max_wait_s: float = Field(default=120.0, gt=0)
    tenant_window_s: float = Field(default=60.0, gt=0)
    grant_ttl_s: float = Field(default=180.0, gt=0)
    slot_wait_s: float = Field(default=0.25, gt=0)  # retry hint when no concurrency slot is free
    # a grant may be scheduled up to this far ahead: its tokens are taken now (the bucket goes
    # into debt) and the caller sleeps delay_s before calling. Waiters queue up behind each
    # other instead of all polling for the next token at once.
    max_delay_s: float = Field(default=2.0, ge=0, le=30)
    # pacing: a bucket holds burst_s seconds of its rate (not a whole minute), so a farm that
    # suddenly has hundreds of free slots still sends calls at the rate, not all at once. A
    # provider that enforces a shorter interval (its headers or a 429 say so) lowers it, down to
    # min_burst_s; it grows back to burst_s over burst_probe_s.
    burst_s: float = Field(default=5.0, gt=0, le=60)
    min_burst_s: float = Field(default=0.5, gt=0, le=60)
    burst_probe_s: float = Field(default=60.0, gt=0, le=3600)
    # a model with no known limits (none configured, no headers seen yet) gets this many calls
    # in flight until its first answer tells the limits (0: no such caution)
    discovery_slots: int = Field(default=1, ge=0, le=10_000)

    @field_validator("models")
    @classmethod
    def _names(cls, value: dict[str, ModelLimits]) -> dict[str, ModelLimits]:
        if any(not name.strip() for name in value):
            raise ValueError("model names must be non-blank")
        return value

    @field_validator("reserve")
    @classmethod
    def _reserve(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        merged = {**DEFAULT_RESERVE, **value}
        if bad := [p.value for p, v in merged.items() if not 0.0 <= v < 1.0]:
            raise ValueError(f"reserve of {', '.join(bad)} must be in [0, 1)")
        if not merged[Priority.HIGH] <= merged[Priority.NORMAL] <= merged[Priority.LOW]:
            raise ValueError("reserve must not shrink from high to normal to low")
        return merged

    @field_validator("concurrency_share")
    @classmethod
    def _share(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        merged = {**DEFAULT_SHARE, **value}
        if bad := [p.value for p, v in merged.items() if not 0.0 < v <= 1.0]:
            raise ValueError(f"concurrency_share of {', '.join(bad)} must be in (0, 1]")
        if not merged[Priority.HIGH] >= merged[Priority.NORMAL] >= merged[Priority.LOW]:
            raise ValueError("concurrency_share must not grow from high to normal to low")
        return merged

    @model_validator(mode="after")
    def _finite(self) -> LimiterConfig:
        numbers = (self.max_wait_s, self.tenant_window_s, self.grant_ttl_s, self.slot_wait_s)
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError("max_wait_s, tenant_window_s, grant_ttl_s, slot_wait_s: finite")
        if self.min_burst_s > self.burst_s:
            raise ValueError(f"min_burst_s ({self.min_burst_s:g}) must not exceed burst_s "
                             f"({self.burst_s:g})")
        return self

    def limits_for(self, model: str) -> ModelLimits:
        return self.models.get(model, NO_LIMITS)
