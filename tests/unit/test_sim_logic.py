"""The simulator's pure parts: markers, token estimates, determinism, caching, buckets."""

from __future__ import annotations

import re
from typing import Any

import pytest

from farm.sim import limits as sim_limits
from farm.sim.content import (
    block_tokens,
    cache_lookup,
    cache_points,
    estimate_input_tokens,
    last_user_text,
    make_text,
    min_cacheable_tokens,
    plan_output,
    prompt_segments,
    request_digest,
)
from farm.sim.server import (
    RUNTIME_FIELDS,
    SimConfig,
    TokenBucket,
    parse_markers,
    ratelimit_headers,
    validate_body,
)


def body(text: str = "hello", **kw: Any) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": 100,
            "messages": [{"role": "user", "content": text}], **kw}


def test_parse_markers() -> None:
    assert parse_markers("no markers here") == {}
    assert parse_markers("x [[sim:status=529]] y [[sim:latency=2.5]]") == {
        "status": 529.0, "latency": 2.5}
    assert parse_markers("[[sim:refusal]][[sim:spend_limit]][[sim:tokens=42]]") == {
        "refusal": 1.0, "spend_limit": 1.0, "tokens": 42.0}
    assert parse_markers("[[sim:status=abc]] [[sim:bogus=1]] [[sim:latency=.5]]") == {
        "latency": 0.5}


def test_token_estimates() -> None:
    assert block_tokens("abcd" * 10) == 10 and block_tokens("abcde") == 2 and block_tokens("") == 0
    assert block_tokens({"type": "text", "text": "abcd" * 3, "cache_control": {}}) == 3
    assert block_tokens({"type": "image", "source": {}}) == 1600
    assert block_tokens({"type": "tool_result", "tool_use_id": "t", "content": "abcd"}) == 9
    # 3 per request + 4 per message + ceil(chars / 4) per block
    assert estimate_input_tokens(body("abcd" * 25)) == 3 + 4 + 25
    two = body("abcd", system="abcdefgh")
    two["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": "ab"}]}]
    assert estimate_input_tokens(two) == 3 + 2 + (4 + 1) + (4 + 1)
    tool = {"name": "t", "input_schema": {"type": "object"}}
    assert estimate_input_tokens(body("abcd", tools=[tool])) > estimate_input_tokens(body("abcd"))


def test_digest_is_a_pure_function_of_the_prompt() -> None:
    base = request_digest(0, body())
    assert base == request_digest(0, body(stream=True, temperature=0.3))
    for seed, other in ((1, body()), (0, body("hello!")), (0, body(system="s")),
                        (0, {**body(), "max_tokens": 5}), (0, {**body(), "model": "claude-x"})):
        assert request_digest(seed, other) != base


@pytest.mark.parametrize("max_tokens", [1, 5, 16, 17, 100, 4096])
def test_output_tokens_stay_in_bounds(max_tokens: int) -> None:
    for digest in range(0, 1 << 20, 7919):
        for prompt in ("hi", "Write a long detailed essay", "Answer yes or no", "in 300 words"):
            out, stop = plan_output(prompt, digest, max_tokens, None)
            assert min(16, max_tokens) <= out <= max_tokens
            assert stop == ("max_tokens" if out == max_tokens else "end_turn")


def test_output_size_follows_the_prompt() -> None:
    def size(prompt: str) -> int:
        return plan_output(prompt, 0x8000, 100_000, None)[0]

    assert size("Answer yes or no") < size("Tell me about bees") < size("Write a long essay")
    assert 0.6 * 2000 <= size("Write about 1500 words on bees") <= 1.4 * 2000
    assert 0.6 * 300 <= size("reply in 300 tokens") <= 1.4 * 300
    assert plan_output("Write a long essay", 0, 50, None) == (50, "max_tokens")
    assert plan_output("x", 0, 500, 42) == (42, "end_turn")
    assert plan_output("x", 0, 40, 42) == (40, "max_tokens")
    assert plan_output("x", 0, 500, 3) == (16, "end_turn")
    assert plan_output("x", 0, 10, 3) == (10, "max_tokens")


def test_text_is_deterministic_lorem_of_the_right_size() -> None:
    assert make_text(123, 50) == make_text(123, 50) != make_text(123 + 10**6, 50)
    for tokens in (1, 16, 160, 4000, 10**6):
        text = make_text(987654321, tokens)
        assert re.fullmatch(r"[A-Z][a-z]*( [a-z]+)*\.", text)
        if 16 <= tokens <= 100_000:
            assert 0.75 * tokens <= len(text) / 4 <= 1.05 * tokens


def test_last_user_text() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                     {"type": "text", "text": "b"}]},
    ]
    assert last_user_text(messages) == "a  b"
    assert last_user_text(messages[:2]) == "first"
    assert last_user_text([{"role": "assistant", "content": "x"}]) == ""


def test_validate_body() -> None:
    assert validate_body(body()) is None
    assert validate_body([]) == (400, "Request body must be a JSON object")
    for field in ("model", "max_tokens", "messages"):
        broken = body()
        del broken[field]
        assert validate_body(broken) == (400, f"{field}: Field required")
    assert validate_body({**body(), "max_tokens": 0})[1].startswith("max_tokens")  # type: ignore[index]
    assert validate_body({**body(), "max_tokens": True})[1].startswith("max_tokens")  # type: ignore[index]
    assert validate_body({**body(), "messages": []}) == (
        400, "messages: at least one message is required")
    assert validate_body({**body(), "messages": [{"role": "system", "content": "x"}]}) == (
        400, "messages.0.role: Input should be 'user' or 'assistant'")
    assert validate_body({**body(), "messages": [{"role": "user"}]}) == (
        400, "messages.0.content: Field required")
    assert validate_body({**body(), "system": 3})[1].startswith("system")  # type: ignore[index]
    assert validate_body({**body(), "model": "gpt-4o"}) == (404, "model: gpt-4o")
    count_body = body()
    del count_body["max_tokens"]
    assert validate_body(count_body, need_max_tokens=False) is None


def test_prompt_cache_write_read_and_ttl() -> None:
    system = [{"type": "text", "text": "a" * 4400, "cache_control": {"type": "ephemeral"}}]
    long_hist = body("b" * 8000, system=system)
    long_hist["messages"][0]["content"] = [
        {"type": "text", "text": "b" * 8000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    model = "claude-sonnet-4-5"  # caches prefixes of 1024 tokens and more
    points = cache_points(model, prompt_segments(long_hist))
    assert [(tokens, ttl) for _, tokens, ttl in points] == [(1100, 300.0), (3104, 3600.0)]
    cache: dict[str, float] = {}
    assert cache_lookup(cache, points, 1000.0) == (0, 1100, 2004)
    assert cache == {}  # a lookup alone stores nothing
    cache_lookup(cache, points, 1000.0, commit=True)
    assert cache_lookup(cache, points, 1001.0) == (3104, 0, 0)
    # the 5-minute prefix expires before the 1-hour one; the longest live prefix is read
    assert cache_lookup(cache, points, 1000.0 + 301) == (3104, 0, 0)
    assert cache_lookup(cache, points, 1000.0 + 3601) == (0, 1100, 2004)
    only_system = cache_points(model, prompt_segments(body("other", system=system)))
    assert cache_lookup(cache, only_system, 1001.0) == (1100, 0, 0)
    assert cache_points("claude-sonnet-4", prompt_segments(long_hist))[0][0] != points[0][0]


@pytest.mark.parametrize(("model", "least"), [
    ("claude-haiku-4-5", 4096), ("claude-haiku-4-5-20251001", 4096), ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096), ("claude-sonnet-4", 1024), ("claude-sonnet-4-20250514", 1024),
    ("claude-sonnet-4-5", 1024), ("claude-sonnet-4-6", 1024), ("claude-opus-4-1", 1024),
    ("claude-opus-4", 1024), ("claude-opus-4-20250514", 1024), ("claude-3-haiku-20240307", 2048),
    ("claude-3-5-haiku", 2048), ("claude-sonnet-5-5", 4096), ("claude-opus-4-8", 4096),
    ("claude-sonnet-45", 4096), ("m", 4096)])
def test_minimum_cacheable_length_per_model(model: str, least: int) -> None:
    assert min_cacheable_tokens(model) == least


def test_a_prefix_below_the_minimum_is_neither_written_nor_read() -> None:
    def system(tokens: int) -> list[dict[str, Any]]:
        return [{"type": "text", "text": "s" * (4 * tokens),
                 "cache_control": {"type": "ephemeral"}}]

    assert cache_points("claude-sonnet-4", prompt_segments(body(system=system(1023)))) == []
    assert [p[1] for p in cache_points("claude-sonnet-4",
                                       prompt_segments(body(system=system(1024))))] == [1024]
    assert cache_points("claude-haiku-4-5", prompt_segments(body(system=system(4095)))) == []
    # a breakpoint below the minimum is skipped, a later one that reaches it still counts
    short = body("q" * 20_000, system=system(100))
    short["messages"][0]["content"] = [
        {"type": "text", "text": "q" * 20_000, "cache_control": {"type": "ephemeral"}}]
    points = cache_points("claude-haiku-4-5", prompt_segments(short))
    assert [p[1] for p in points] == [5104]
    cache: dict[str, float] = {}
    assert cache_lookup(cache, points, 0.0, commit=True) == (0, 5104, 0)
    assert cache_lookup(cache, points, 1.0) == (5104, 0, 0)


def test_token_bucket_arithmetic() -> None:
    bucket = TokenBucket(capacity=60, rate=1.0, level=60, updated=0.0)
    assert bucket.wait_s(60, now=0.0) == 0.0
    bucket.level -= 60
    assert bucket.wait_s(1, now=0.0) == 1.0
    assert bucket.wait_s(10, now=4.0) == 6.0 and bucket.level == 4.0
    assert bucket.wait_s(1000, now=4.0) == 56.0  # larger than capacity: needs a full bucket
    assert bucket.wait_s(1, now=1000.0) == 0.0 and bucket.level == 60  # capped at capacity


def test_ratelimit_headers() -> None:
    buckets = {"requests": TokenBucket(50, 50 / 60, 49.7, 0.0),
               "input-tokens": TokenBucket(30_000, 500, 12_345, 0.0),
               "output-tokens": TokenBucket(8_000, 8_000 / 60, 7_999, 0.0)}
    headers = ratelimit_headers(buckets, now=0.0)
    assert headers["anthropic-ratelimit-requests-limit"] == "50"
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "12000"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "7000"
    assert headers["anthropic-ratelimit-tokens-limit"] == "8000"  # the most depleted
    assert headers["anthropic-ratelimit-input-tokens-reset"] == "1970-01-01T00:00:36Z"
    assert ratelimit_headers({}, 0.0) == {}


def test_config() -> None:
    config = SimConfig()
    assert (config.host, config.port, config.seed, config.require_api_key) == (
        "127.0.0.1", 8787, 0, True)
    with pytest.raises(ValueError):
        SimConfig(fault_529_rate=2)
    with pytest.raises(ValueError):
        SimConfig(unknown=1)  # type: ignore[call-arg]
    assert {"fault_529_rate", "rpm_limit", "overload_until", "fixed_latency_s",
            "model_limits", "overload_models"} <= RUNTIME_FIELDS
    assert "port" not in RUNTIME_FIELDS


def test_the_limits_moved_but_import_from_sim_still() -> None:
    assert TokenBucket is sim_limits.TokenBucket
    assert ratelimit_headers is sim_limits.ratelimit_headers


def test_model_limits_validation() -> None:
    assert SimConfig().model_limits == {} and SimConfig().overload_models == {}
    ok = SimConfig(model_limits={"claude-haiku-4-5": {"rpm": 5, "itpm": 1000, "otpm": 100}})
    assert ok.model_limits["claude-haiku-4-5"]["rpm"] == 5
    problems = {
        "unknown limit tpm": {"m": {"rpm": 5, "tpm": 10}},
        "m'].rpm must be a positive integer, not 0": {"m": {"rpm": 0}},
        "m'].otpm must be a positive integer, not -3": {"m": {"otpm": -3}},
        "m'].itpm must be a positive integer, not True": {"m": {"itpm": True}},
        "m'].rpm must be a positive integer, not '5'": {"m": {"rpm": "5"}},
        "must be an object": {"m": 5},
        "must map a model": ["m"],
    }
    for message, bad in problems.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            SimConfig(model_limits=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overload_models"):
        SimConfig(overload_models={"m": "soon"})  # type: ignore[dict-item]


def test_limits_per_model_fall_back_to_the_global_ones() -> None:
    default: dict[str, int | None] = {"rpm": 50, "itpm": None, "otpm": 8000}
    own = {"claude-haiku-4-5": {"rpm": 5, "itpm": 1000}}
    assert sim_limits.limits_for("claude-haiku-4-5", own, default) == {
        "requests": 5, "input-tokens": 1000, "output-tokens": 8000}
    assert sim_limits.limits_for("claude-sonnet-4-5", own, default) == {
        "requests": 50, "input-tokens": None, "output-tokens": 8000}
    buckets = sim_limits.make_buckets({"requests": 5, "input-tokens": None}, now=10.0)
    assert buckets == {"requests": TokenBucket(5, 5 / 60, 5, 10.0)}


def test_admission_wait_and_current_headers() -> None:
    buckets = sim_limits.make_buckets({"requests": 60, "output-tokens": 600}, now=0.0)
    assert sim_limits.admission_wait({}, {}, 0.0) == (0.0, "")
    assert sim_limits.admission_wait(buckets, {"requests": 1, "output-tokens": 600}, 0.0)[0] == 0
    buckets["output-tokens"].level = 0
    assert sim_limits.admission_wait(buckets, {"requests": 1, "output-tokens": 100}, 0.0) == (
        10.0, "output-tokens")
    buckets["requests"].level = 0
    # refilled to "now" before they are shown: 30 s refill 30 requests and 300 tokens
    headers = sim_limits.current_headers(buckets, 30.0)
    assert headers["anthropic-ratelimit-requests-remaining"] == "30"
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "600"
    assert buckets["requests"].level == 30 and buckets["requests"].updated == 30.0


def test_storms_for_all_models_and_for_one() -> None:
    calm = SimConfig()
    assert not calm.overloaded("claude-haiku-4-5", 100.0)
    everyone = SimConfig(overload_until=200.0)
    assert everyone.overloaded("a", 100.0) and not everyone.overloaded("a", 200.0)
    one = SimConfig(overload_models={"claude-haiku-4-5": 200.0})
    assert one.overloaded("claude-haiku-4-5", 199.9)
    assert not one.overloaded("claude-sonnet-4-5", 100.0)
    assert not one.overloaded("claude-haiku-4-5", 200.0)
    both = SimConfig(overload_until=150.0, overload_models={"claude-haiku-4-5": 100.0})
    assert both.overloaded("claude-haiku-4-5", 120.0)  # the longer storm wins
