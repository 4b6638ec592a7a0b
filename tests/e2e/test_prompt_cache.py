"""Prompt caching end to end: jobs sharing a long system prompt, run by a real worker
against the simulator. The first call writes the prefix, every later one reads it, and the
farm's recorded costs add up to exactly what the simulator billed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from farm.client import Farm, JobView
from farm.costs.caching import min_cacheable_tokens
from farm.costs.estimate import worst_case
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, JobStatus, Usage
from tests_e2e import running_workers

Stats = Callable[[], dict[str, Any]]
MODEL = "claude-haiku-4-5"  # the haiku-simple queue's model: caches from 4,096 tokens
CLAUSE = ("Support policy {n}: a refund is granted within 30 days of purchase when the item "
          "is unused; damaged deliveries are replaced at no cost; escalate legal threats. ")


def policy(tag: str, tokens: int) -> str:
    """A system prompt of about ``tokens`` tokens (4 characters each)."""
    text, n = f"[{tag}] You triage support tickets for the shop. ", 0
    while len(text) < 4 * tokens:
        text += CLAUSE.format(n=n)
        n += 1
    return text


@pytest.fixture(scope="module")
def worker(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("prompt-cache") / "worker.log"
    with running_workers(e2e_env, [(log, "haiku-simple", 4)]):
        yield log


def run(farm: Farm, jobs: list[dict[str, Any]]) -> list[JobView]:
    views = farm.wait(farm.submit_many(jobs), timeout=120)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * len(jobs), [
        (v.status, v.error) for v in views]
    assert {(v.queue, v.served_model) for v in views} == {("haiku-simple", MODEL)}
    return views


def tickets(system: str, numbers: range, **fields: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"Ticket {i}: my order arrived damaged. Classify it in one word.",
             "system": system, "complexity": "simple", "max_tokens": 64, **fields}
            for i in numbers]


def test_jobs_sharing_a_long_system_prompt_read_it_from_the_cache(
        worker: Path, farm: Farm, sim_stats: Stats) -> None:
    system = policy("five minutes", 6000)
    assert len(system) // 4 > min_cacheable_tokens(MODEL)
    first = run(farm, tickets(system, range(1)))  # writes the prefix before the others run
    rest = run(farm, tickets(system, range(1, 50)))
    writer = first[0]
    assert writer.cache_creation_input_tokens > min_cacheable_tokens(MODEL)
    assert writer.cache_read_input_tokens == 0
    assert [v.id for v in rest if v.cache_read_input_tokens == 0] == []
    assert {v.cache_read_input_tokens for v in rest} == {writer.cache_creation_input_tokens}
    assert {v.cache_creation_input_tokens for v in rest} == {0}
    prices = default_pricebook()
    for view in (writer, *rest):  # each call at its own rates: 5-minute writes, reads
        usage = Usage(input_tokens=view.input_tokens, output_tokens=view.output_tokens,
                      cache_creation_input_tokens=view.cache_creation_input_tokens,
                      cache_read_input_tokens=view.cache_read_input_tokens,
                      cache_creation_5m_input_tokens=view.cache_creation_input_tokens,
                      cache_creation_1h_input_tokens=0)
        assert view.cost_usd == prices.cost(MODEL, usage)
    recorded = sum((v.cost_usd or Decimal(0) for v in (writer, *rest)), Decimal(0))
    stats = sim_stats()
    assert stats["messages_requests"] == 50
    assert recorded == Decimal(stats["billed_usd"])
    # what the budgets reserved for the writing call covers what it cost
    request = JobRequest(**tickets(system, range(1))[0])
    assert worst_case(prices[MODEL], request, "5m").usd >= writer.cost_usd
    uncached = sum((prices.cost(MODEL, Usage(
        input_tokens=v.input_tokens + v.cache_creation_input_tokens + v.cache_read_input_tokens,
        output_tokens=v.output_tokens)) or Decimal(0) for v in (writer, *rest)), Decimal(0))
    print(f"\n50 jobs, ~6,000-token shared system prompt on {MODEL}: "
          f"${recorded} with caching, ${uncached} without ({recorded / uncached:.1%})")


def test_the_hour_ttl_is_written_and_billed_at_its_own_rate(
        worker: Path, farm: Farm, sim_stats: Stats) -> None:
    system = policy("one hour", 5000)
    first = run(farm, tickets(system, range(1), cache="1h"))
    rest = run(farm, tickets(system, range(1, 4), cache="1h"))
    writer, prices = first[0], default_pricebook()
    assert writer.cache_creation_input_tokens > 0 and writer.cache_read_input_tokens == 0
    assert all(v.cache_read_input_tokens == writer.cache_creation_input_tokens for v in rest)
    hour = Usage(input_tokens=writer.input_tokens, output_tokens=writer.output_tokens,
                 cache_creation_input_tokens=writer.cache_creation_input_tokens,
                 cache_creation_5m_input_tokens=0,
                 cache_creation_1h_input_tokens=writer.cache_creation_input_tokens)
    assert writer.cost_usd == prices.cost(MODEL, hour)
    recorded = sum((v.cost_usd or Decimal(0) for v in (writer, *rest)), Decimal(0))
    assert recorded == Decimal(sim_stats()["billed_usd"])


def test_a_short_system_prompt_is_not_cached(worker: Path, farm: Farm,
                                             sim_stats: Stats) -> None:
    system = policy("short", 3000)  # under claude-haiku-4-5's 4,096
    views = run(farm, tickets(system, range(3)))
    assert {(v.cache_creation_input_tokens, v.cache_read_input_tokens) for v in views} == {
        (0, 0)}
    recorded = sum((v.cost_usd or Decimal(0) for v in views), Decimal(0))
    assert recorded == Decimal(sim_stats()["billed_usd"])
