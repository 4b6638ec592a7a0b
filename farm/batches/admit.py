"""The checks of a flush, pure: before a job goes into a batch, its cost cap and the hard
budgets covering it are checked as before a synchronous call (farm.costs.estimate's
``CapCheck``, farm.costs.budgets' ``decide``), at the batch price: the worst case of the
call as sent, halved.

A batch takes up to 24 hours, far longer than a synchronous call's reservation lives in the
Redis ledger, so the budgets are checked here against Postgres: what the period has spent
(the attempt rows), plus the worst cases of the requests in batches still in flight
(``batch_items.worst_usd``), plus those of the jobs of this flush admitted before.

A job that must make no call (over its cap, a spent budget that fails its jobs, a model
with no price under a hard budget) is stopped: dead, into the dead-letter queue, as a
synchronous job is. A job a budget cannot take now (it waits at its limit, or in-flight
work holds its room) waits for a later flush.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from farm.capacity.admission import COST_CAP
from farm.costs.budgets import (
    BUDGET_EXCEEDED,
    Budget,
    Busy,
    Exhausted,
    Mode,
    OnExceed,
    Standing,
    covering,
    decide,
)
from farm.costs.estimate import CapCheck, WorstCase, from_nano, to_nano
from farm.costs.ledger import budget_reason
from farm.costs.money import usd


@dataclass(frozen=True)
class Candidate:
    """A waiting job as the flush checks it: its cap and what it has spent, and the worst
    case of its request at the batch price (None: its model has no price)."""

    job_id: uuid.UUID
    tenant: str
    queue: str
    model: str
    cap: Decimal
    spent: Decimal
    worst: WorstCase | None


@dataclass(frozen=True)
class Room:
    """A hard budget's period as Postgres tells it: spent, and held by batches in flight."""

    budget: Budget
    spent: Decimal
    in_flight: Decimal = Decimal(0)


@dataclass(frozen=True)
class Admit:
    job_id: uuid.UUID


@dataclass(frozen=True)
class Stop:
    job_id: uuid.UUID
    reason: str
    error_class: str  # COST_CAP or BUDGET_EXCEEDED


@dataclass(frozen=True)
class Wait:
    job_id: uuid.UUID
    reason: str  # a budget's wait_reason (farm.costs.ledger.budget_reason's start)


Verdict = Admit | Stop | Wait


@dataclass
class _Held:
    room: Room
    added: int = 0  # nano-USD admitted by this flush
    standing: Standing = field(init=False)

    def __post_init__(self) -> None:
        b = self.room.budget
        self.standing = Standing(to_nano(b.limit_usd), True, b.on_exceed is OnExceed.FAIL,
                                 True, to_nano(self.room.spent), to_nano(self.room.in_flight))

    def now(self) -> Standing:
        s = self.standing
        return replace(s, reserved=s.reserved + self.added)


def check(candidates: Sequence[Candidate], rooms: Sequence[Room]) -> list[Verdict]:
    """Each job's verdict, in order; the admitted ones count against the budgets of the jobs
    after them."""
    held = {r.budget.id: _Held(r) for r in rooms if r.budget.mode is Mode.HARD}
    out: list[Verdict] = []
    for job in candidates:
        if job.worst is not None:
            cap = CapCheck(job.cap, job.spent, job.worst)
            if not cap.fits:
                out.append(Stop(job.job_id, "stopped before crossing its cost cap (at the "
                                f"batch price): {cap.explain()}", COST_CAP))
                continue
        mine = [held[b.id] for b in covering((h.room.budget for h in held.values()),
                                             job.tenant, job.queue, job.model)]
        if mine and job.worst is None:
            out.append(Stop(job.job_id, f"{job.model} has no price row: hard budget(s) "
                            f"{', '.join(h.room.budget.id for h in mine)} cannot be kept for "
                            "its calls", BUDGET_EXCEEDED))
            continue
        cost = 0 if job.worst is None else job.worst.nano
        decision = decide([h.now() for h in mine], cost)
        if isinstance(decision, (Exhausted, Busy)):
            h = mine[decision.index]
            b, s = h.room.budget, h.now()
            held_by = (f", {usd(from_nano(s.reserved), significant=4)} held by batches in "
                       "flight" if s.reserved else "")
            why = (f"{budget_reason(b.id)} spent {usd(h.room.spent, significant=4)} of "
                   f"{usd(b.limit_usd)}{held_by}, and this batch request may cost up to "
                   f"{usd(from_nano(cost), significant=4)}")
            if isinstance(decision, Exhausted) and decision.fail:
                out.append(Stop(job.job_id, why, BUDGET_EXCEEDED))
            else:
                out.append(Wait(job.job_id, why))
            continue
        for h in mine:
            h.added += cost
        out.append(Admit(job.job_id))
    return out
