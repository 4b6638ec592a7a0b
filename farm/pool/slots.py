"""Elastic slots: how many jobs a worker process runs at once, moved between ``min`` and
``max`` by its own utilisation. A pure decision over frozen data (``decide``); the
controller that samples and applies it is farm.pool.elastic.

Utilisation is busy ÷ slots, averaged over the samples of the last ``window_s`` seconds
taken since the last change (a change alters what utilisation means). Above ``up_at``
the slots grow by ``step_up``, below ``down_at`` they shrink by ``step_down``, each within
the bounds and only once its cool-down since the last change has passed: growing is quick
(``up_cooldown_s``), shrinking patient (``down_cooldown_s``), so a short lull does not
give back the slots a backlog needs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

FIXED = "fixed"  # FARM_SLOTS=fixed: the worker's -c slots, always


class SlotPolicy(BaseModel):
    """The bounds, thresholds, steps and timings of a worker's elastic slots."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(default=10, ge=1, le=2000)
    max: int = Field(default=100, ge=1, le=2000)
    up_at: float = Field(default=0.8, gt=0, le=1)  # utilisation above which slots grow
    down_at: float = Field(default=0.2, ge=0, lt=1)  # utilisation below which they shrink
    step_up: int = Field(default=10, ge=1, le=2000)
    step_down: int = Field(default=5, ge=1, le=2000)
    window_s: float = Field(default=4.0, gt=0, le=3600)
    up_cooldown_s: float = Field(default=2.0, ge=0, le=3600)
    down_cooldown_s: float = Field(default=30.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"slots: min ({self.min}) must not exceed max ({self.max})")
        if self.down_at >= self.up_at:
            raise ValueError(f"slots: down_at ({self.down_at:g}) must be below up_at "
                             f"({self.up_at:g})")
        return self

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def within(self, threads: int) -> SlotPolicy:
        """The policy for a process of ``threads`` threads: no bound above them."""
        top = min(self.max, threads)
        return self.model_copy(update={"min": min(self.min, top), "max": top})

    @classmethod
    def pinned(cls, slots: int) -> SlotPolicy:
        """Exactly ``slots`` slots, never moving (FARM_SLOTS=fixed)."""
        return cls(min=slots, max=slots)


def parse_slots(value: Any) -> SlotPolicy | None:
    """FARM_SLOTS (or a queue's ``slots``): "fixed" (None: the worker's -c, always), a JSON
    object of SlotPolicy fields (the others keep their defaults), or a SlotPolicy."""
    if value is None or isinstance(value, SlotPolicy):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == FIXED:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(
                f'slots must be "fixed" or a JSON object of min, max, up_at, down_at, step_up, '
                f"step_down, window_s, up_cooldown_s, down_cooldown_s; got {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f'slots must be "fixed" or an object, not {type(value).__name__}')
    return SlotPolicy.model_validate(value)


@dataclass(frozen=True)
class Sample:
    at: float  # the controller's clock, seconds
    busy: int  # slots running a job
    slots: int


@dataclass(frozen=True)
class Change:
    before: int
    after: int
    utilisation: float  # the mean that decided it
    over_s: float  # the time its samples stand for: the window, or since the last change

    @property
    def grew(self) -> bool:
        return self.after > self.before

    def describe(self, policy: SlotPolicy) -> str:
        edge = (f"> {policy.up_at:.0%}" if self.grew else f"< {policy.down_at:.0%}")
        return (f"slots {self.before} -> {self.after} (utilisation {self.utilisation:.0%} "
                f"over {self.over_s:.0f}s {edge}; bounds {policy.min}-{policy.max})")


def utilisation(samples: Sequence[Sample]) -> float | None:
    """The mean of busy ÷ slots over ``samples``; None without any."""
    shares = [min(1.0, s.busy / s.slots) for s in samples if s.slots > 0]
    return math.fsum(shares) / len(shares) if shares else None  # 0.2 x n averages to 0.2


def clamp(policy: SlotPolicy, slots: int) -> int:
    return max(policy.min, min(policy.max, slots))


def decide(policy: SlotPolicy, slots: int, samples: Sequence[Sample], last_change_at: float,
           now: float) -> Change | None:
    """The change of ``slots`` due now, or None. ``samples`` may hold any history: only those
    at or after ``last_change_at`` and within the window count. Slots outside the bounds (a
    new policy) come back within them at once."""
    inside = clamp(policy, slots)
    counted = [s for s in samples if s.at >= last_change_at and s.at > now - policy.window_s]
    used = utilisation(counted)
    span = min(policy.window_s, now - last_change_at)  # the time the samples stand for
    if inside != slots:
        return Change(slots, inside, used if used is not None else 0.0, span)
    if used is None:
        return None
    quiet_for = now - last_change_at
    if used > policy.up_at and slots < policy.max and quiet_for >= policy.up_cooldown_s:
        return Change(slots, min(policy.max, slots + policy.step_up), used, span)
    if used < policy.down_at and slots > policy.min and quiet_for >= policy.down_cooldown_s:
        return Change(slots, max(policy.min, slots - policy.step_down), used, span)
    return None
