"""What jobs would cost, before they are submitted: ``Farm.estimate`` and
``farm submit --dry-run``. The figures are pure (``estimate_jobs``); the only I/O is one
read-only query for the observed output length of recent jobs (``output_history``).

Per job: its route; its worst case (one call on the dearest model it may call:
``farm.costs.admit.dearest_call``); its expected cost, the estimated input tokens
(``input_tokens_bound``) at the input price plus the expected output tokens at the output
price; and its cap. The expected output tokens are the *mean* ``output_tokens`` of the most
recent ``HISTORY_JOBS`` succeeded jobs of the same queue and served model (the mean, not the
median: a sum of expected costs is the expected sum), at most the job's ``max_tokens``;
with no such job, ``max_tokens`` (the basis says "no history: worst case"). A model with no
price row has no figures (None), and is named in the basis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.costs.admit import dearest_call, job_cap
from farm.costs.estimate import CapCheck, input_tokens_bound
from farm.costs.money import ExactUsd, usd
from farm.costs.pricing import MILLION, PriceBook
from farm.jobs import JobRequest, Route
from farm.settings import Settings

HISTORY_JOBS = 200

# (queue, served model) -> (mean output tokens, jobs it is the mean of)
History = Mapping[tuple[str, str], tuple[float, int]]

HISTORY_SQL = text(
    """
    SELECT queue, model, avg(output_tokens)::float8 AS mean, count(*) AS n
    FROM (
        SELECT j.queue, coalesce(j.served_model, j.model) AS model, j.output_tokens,
               row_number() OVER (PARTITION BY j.queue, coalesce(j.served_model, j.model)
                                  ORDER BY j.finished_at DESC NULLS LAST, j.id) AS recent
        FROM jobs j
        JOIN unnest(CAST(:queues AS text[]), CAST(:models AS text[])) AS p(queue, model)
          ON j.queue = p.queue AND coalesce(j.served_model, j.model) = p.model
        WHERE j.status = 'succeeded'
    ) s
    WHERE recent <= :n
    GROUP BY queue, model
    """
)


class Expected(BaseModel):
    """A job's expected cost and what it rests on."""

    model_config = ConfigDict(frozen=True)

    usd: ExactUsd | None  # None: the model has no price row
    input_tokens: int
    output_tokens: int
    basis: str  # "mean output of the last 200 succeeded jobs of …" / "no history: worst case"


class JobEstimate(BaseModel):
    """One job: where it would run, its worst and expected cost, and its cap."""

    model_config = ConfigDict(frozen=True)

    index: int
    route: Route
    worst_usd: ExactUsd | None  # one call on the dearest model it may call; None: unpriced
    worst_explain: str
    expected: Expected
    cap_usd: ExactUsd
    fits: bool  # the worst case fits the cap (an unpriced job cannot be refused: True)


class EstimateTotals(BaseModel):
    model_config = ConfigDict(frozen=True)

    jobs: int
    worst_usd: ExactUsd  # over the priced jobs
    expected_usd: ExactUsd
    unpriced_jobs: int


class Estimates(BaseModel):
    model_config = ConfigDict(frozen=True)

    jobs: tuple[JobEstimate, ...]
    totals: EstimateTotals

    @property
    def problems(self) -> list[tuple[int, str, str]]:
        """The jobs whose worst case exceeds their cap, as InvalidJobError's problems (job
        index, field, message): what a submit of them would refuse."""
        return [(j.index, "max_cost_usd", j.worst_explain) for j in self.jobs if not j.fits]


def output_history(engine: Engine, pairs: Sequence[tuple[str, str]], *,
                   recent: int = HISTORY_JOBS) -> dict[tuple[str, str], tuple[float, int]]:
    """The mean output tokens of the last ``recent`` succeeded jobs of each (queue, served
    model), in one read-only query; pairs with no such job are left out."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    with engine.connect() as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        rows = conn.execute(HISTORY_SQL, {"queues": [q for q, _ in wanted],
                                          "models": [m for _, m in wanted],
                                          "n": recent}).all()
        conn.rollback()
    return {(r.queue, r.model): (float(r.mean), int(r.n)) for r in rows}


def expected_cost(request: JobRequest, route: Route, prices: PriceBook,
                  history: History) -> Expected:
    """The job's expected cost on its routed model (see the module doc)."""
    tokens_in = input_tokens_bound(request)
    seen = history.get((route.queue, route.model))
    if seen is None:
        tokens_out, basis = request.max_tokens, "no history: worst case"
    else:
        mean, jobs = seen
        tokens_out = min(request.max_tokens, math.ceil(mean))
        basis = (f"mean output {mean:,.0f} tokens of the last {jobs} succeeded jobs of "
                 f"{route.queue} on {route.model}")
        if tokens_out < math.ceil(mean):
            basis += f", capped at max_tokens {request.max_tokens:,}"
    price = prices.price(route.model)
    if price is None:
        return Expected(usd=None, input_tokens=tokens_in, output_tokens=tokens_out,
                        basis=f"{route.model} has no price row: cost unknown")
    amount = (price.input * tokens_in + price.output * tokens_out) / MILLION
    return Expected(usd=amount, input_tokens=tokens_in, output_tokens=tokens_out, basis=basis)


def estimate_jobs(routed: Sequence[tuple[JobRequest, Route]], settings: Settings,
                  prices: PriceBook, history: History) -> Estimates:
    """The estimates of validated, routed jobs (pure)."""
    out: list[JobEstimate] = []
    for index, (request, route) in enumerate(routed):
        cap = job_cap(request, route.queue, settings)
        worst = dearest_call(request, route, settings, prices)
        check = None if worst is None else CapCheck(cap, Decimal(0), worst)
        out.append(JobEstimate(
            index=index, route=route, worst_usd=None if worst is None else worst.usd,
            worst_explain=(f"no price row for {route.model}: cost unknown" if check is None
                           else check.explain()),
            expected=expected_cost(request, route, prices, history),
            cap_usd=cap, fits=check is None or check.fits))
    totals = EstimateTotals(
        jobs=len(out),
        worst_usd=sum((j.worst_usd for j in out if j.worst_usd is not None), Decimal(0)),
        expected_usd=sum((j.expected.usd for j in out if j.expected.usd is not None),
                         Decimal(0)),
        unpriced_jobs=sum(1 for j in out if j.worst_usd is None or j.expected.usd is None))
    return Estimates(jobs=tuple(out), totals=totals)


def render(estimates: Estimates, names: Sequence[str] = ()) -> str:
    """A fixed-width table for terminals, one line per job and a total line; ``names``
    names each job (a file's line) when given, else its index."""
    head = (f"{'job':<10}{'queue':<16}{'model':<20}{'complexity':<11}{'worst USD':>12}"
            f"{'expected USD':>14}{'cap USD':>10}  basis")
    lines = [head, "-" * len(head)]
    for j in estimates.jobs:
        name = names[j.index] if j.index < len(names) else str(j.index)
        mark = "" if j.fits else "  OVER CAP"
        lines.append(f"{name:<10}{j.route.queue:<16}{j.route.model:<20}"
                     f"{j.route.complexity.value:<11}{usd(j.worst_usd, significant=4):>12}"
                     f"{usd(j.expected.usd, significant=4):>14}{usd(j.cap_usd):>10}  "
                     f"{j.expected.basis}{mark}")
    t = estimates.totals
    lines.append("-" * len(head))
    lines.append(f"{f'total ({t.jobs} job(s))':<57}{usd(t.worst_usd, significant=4):>12}"
                 f"{usd(t.expected_usd, significant=4):>14}")
    if t.unpriced_jobs:
        lines.append(f"WARNING: {t.unpriced_jobs} job(s) on a model with no price row: "
                     "their cost is unknown and left out of the totals")
    lines.append("nothing was enqueued (dry run)")
    return "\n".join(lines)
