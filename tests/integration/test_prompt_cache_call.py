"""The provider call with prompt caching (farm.provider.messages.call), through the real
SDK over real HTTP to the simulator (no Redis/Postgres needed): what goes on the wire, what
the usage says, what the call costs against its worst case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from tests_sim import in_process_sim

from farm.costs.estimate import worst_case
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest
from farm.provider.messages import call

HAIKU = "claude-haiku-4-5"  # caches from 4,096 tokens
SONNET = "claude-sonnet-4-5"  # from 1,024


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The simulator on a free port, served by an event loop on a background thread."""
    with in_process_sim(ttft_s=0.001) as url:
        yield url


@pytest.fixture
def sent(server: str) -> Iterator[tuple[anthropic.Anthropic, list[dict[str, Any]]]]:
    """An SDK client on the simulator, and the bodies of the messages it sends."""
    bodies: list[dict[str, Any]] = []

    def capture(request: httpx2.Request) -> None:
        if request.url.path == "/v1/messages":
            bodies.append(json.loads(request.content))

    http = httpx2.Client(event_hooks={"request": [capture]})
    client = anthropic.Anthropic(api_key="sim", base_url=server, max_retries=0,
                                 http_client=http)
    try:
        yield client, bodies
    finally:
        client.close()


def words(tag: str, tokens: int) -> str:
    return (f"[{tag}] " + "policy clause " * tokens)[: 4 * tokens]


def test_a_prefix_below_the_minimum_goes_out_without_cache_control(
        sent: tuple[anthropic.Anthropic, list[dict[str, Any]]]) -> None:
    client, bodies = sent
    request = JobRequest(prompt="Classify in one word.", system=words("short", 3000),
                         documents=(words("doc", 500),))
    for _ in range(2):
        result = call(client, HAIKU, request, "5m")
        assert (result.usage.cache_creation_input_tokens,
                result.usage.cache_read_input_tokens) == (0, 0)
    assert len(bodies) == 2 and all("cache_control" not in json.dumps(b) for b in bodies)
    assert bodies[0]["system"] == request.system  # left a plain string


def test_a_long_prefix_is_written_once_then_read_and_priced_at_its_ttl(
        sent: tuple[anthropic.Anthropic, list[dict[str, Any]]]) -> None:
    client, bodies = sent
    request = JobRequest(prompt="Classify in one word.", system=words("long", 1100),
                         documents=(words("doc", 400),), max_tokens=32)
    first, second = call(client, SONNET, request, "1h"), call(client, SONNET, request, "1h")
    hour = {"type": "ephemeral", "ttl": "1h"}
    assert bodies[0]["system"] == [{"type": "text", "text": request.system,
                                    "cache_control": hour}]
    document, prompt = bodies[0]["messages"][0]["content"]
    assert document["cache_control"] == hour and "cache_control" not in prompt
    assert bodies[1] == bodies[0]
    assert first.usage.cache_creation_1h_input_tokens == first.usage.cache_creation_input_tokens
    assert first.usage.cache_creation_input_tokens > 1500
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    prices = default_pricebook()
    write_cost, read_cost = prices.cost(SONNET, first.usage), prices.cost(SONNET, second.usage)
    assert write_cost is not None and read_cost is not None and read_cost < write_cost
    price = prices[SONNET]
    # the worst case the budgets reserve covers the writing call, at the hour's price
    assert worst_case(price, request, "1h").usd >= write_cost
    assert worst_case(price, request, "5m").usd < write_cost  # the TTL matters


def test_caching_off_sends_no_cache_control(
        sent: tuple[anthropic.Anthropic, list[dict[str, Any]]]) -> None:
    client, bodies = sent
    request = JobRequest(prompt="Classify in one word.", system=words("off", 5000))
    result = call(client, SONNET, request, "off")
    assert result.usage.cache_creation_input_tokens == 0
    assert "cache_control" not in json.dumps(bodies)
    call(client, SONNET, request)  # off unless told
    assert "cache_control" not in json.dumps(bodies)
