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
from farm.costs.money import usd
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


def test_the_planned_cached_prefix_is_priced_at_the_ttls_write_price() -> None:
    request = JobRequest(prompt="Summarise.", system="s" * 4 * 8000, max_tokens=100)
    tokens_in = input_tokens_bound(request)
    cached = 3 + 8000  # the request's framing and the system prompt: the planned prefix
    five, hour = worst_case(SONNET, request, "5m"), worst_case(SONNET, request, "1h")
    assert (five.cache_write_tokens, five.cache_write_price) == (cached, Decimal("2.50"))
    assert five.usd == (Decimal(2) * (tokens_in - cached) + Decimal("2.50") * cached
                        + Decimal(10) * 100) / 1_000_000
    assert (hour.cache_write_tokens, hour.cache_write_price) == (cached, Decimal("4.00"))
    assert hour.usd > five.usd > worst_case(SONNET, request, "off").usd
    off = worst_case(SONNET, request, "off")
    assert off.cache_write_tokens == 0 and off.usd == (Decimal(2) * tokens_in
                                                       + Decimal(10) * 100) / 1_000_000
    assert five.explain() == (
        f"{tokens_in - cached:,} input tokens at $2.00/M + 8,003 cache-write tokens at "
        f"$2.50/M + 100 output tokens at $10.00/M on claude-sonnet-5-5 = "
        f"{usd(five.usd, significant=4)}")
    # no TTL given: the request's own, else FARM_PROMPT_CACHE's default "5m"
    assert worst_case(SONNET, request) == five
    assert worst_case(SONNET, request.model_copy(update={"cache": "1h"})) == hour


def test_a_prefix_under_the_models_minimum_is_priced_as_plain_input() -> None:
    request = JobRequest(prompt="Summarise.", system="s" * 4 * 3000, max_tokens=100)
    w = worst_case(SONNET, request, "1h")  # claude-sonnet-5-5 caches from 4,096 tokens
    assert w.cache_write_tokens == 0 and w.input_price == Decimal(2)
    sonnet_4_5 = default_pricebook()["claude-sonnet-4-5"]  # from 1,024 tokens
    assert worst_case(sonnet_4_5, request, "1h").cache_write_tokens == 3 + 3000
