"""A call's worst case and a job's cost cap (farm.costs.estimate), pure."""

from __future__ import annotations

from decimal import Decimal

import pytest

from farm.costs.estimate import (
    FRAMING_TOKENS,
    CapCheck,
    cost_cap,
    from_nano,
    input_tokens_bound,
    to_nano,
    worst_case,
)
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest

SONNET = default_pricebook()["claude-sonnet-5-5"]  # $2 in, $10 out, $4 1h write


def test_the_worst_case_is_every_input_token_and_max_tokens_of_output() -> None:
    request = JobRequest(prompt="x" * 3999, system="y", max_tokens=2000)
    w = worst_case(SONNET, request)
    assert w.input_tokens == 1000 + FRAMING_TOKENS
    assert w.usd == (Decimal(2) * 1016 + Decimal(10) * 2000) / 1_000_000
    assert w.nano == 22_032_000
    assert w.explain() == ("1,016 input tokens at $2.00/M + 2,000 output tokens at $10.00/M "
                           "on claude-sonnet-5-5 = $0.02203")


def test_a_request_that_asks_for_caching_is_priced_at_the_dearest_write() -> None:
    tool = {"name": "t", "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    request = JobRequest(prompt="x" * 400, tools=(tool,), max_tokens=10)
    w = worst_case(SONNET, request)
    assert w.input_price == Decimal("4.00")
    assert w.input_tokens == input_tokens_bound(request) > 100 + FRAMING_TOKENS


def test_nano_dollars_round_up_and_back_exactly() -> None:
    assert to_nano(Decimal("0.0000000011")) == 2
    assert to_nano(Decimal("1.5")) == 1_500_000_000
    assert from_nano(1_500_000_000) == Decimal("1.5")


@pytest.mark.parametrize(("job", "tenant", "queue", "cap"), [
    ("0.5", "3", "4", "0.5"),  # the job's own wins
    (None, "3", "4", "3"),  # then its tenant's
    (None, None, "4", "4"),  # then its queue's
    (None, None, None, "2.00"),  # then the farm's default
])
def test_the_most_specific_cap_wins(job: str | None, tenant: str | None, queue: str | None,
                                    cap: str) -> None:
    request = JobRequest(prompt="p", tenant="t",
                         max_cost_usd=None if job is None else Decimal(job))
    got = cost_cap(request, "q", default=Decimal("2.00"),
                   tenants={} if tenant is None else {"t": Decimal(tenant)},
                   queues={} if queue is None else {"q": Decimal(queue)})
    assert got == Decimal(cap)


def test_a_cap_check_adds_what_was_spent_and_gives_the_figures() -> None:
    w = worst_case(SONNET, JobRequest(prompt="x" * 40, max_tokens=64_000))
    assert CapCheck(Decimal("0.65"), Decimal(0), w).fits
    over = CapCheck(Decimal("0.65"), Decimal("0.01"), w)
    assert not over.fits
    assert over.explain() == (
        "worst case $0.6401 (26 input tokens at $2.00/M + 64,000 output tokens at $10.00/M on "
        "claude-sonnet-5-5 = $0.6401) on top of $0.01000 already spent exceeds the job's "
        "cost cap $0.650 (max_cost_usd)")
