"""Prompt caching's planner, its minimums table, the breakpoints it places and the TTL a
call runs under (farm.costs.caching, farm.costs.prompt_cache, farm.costs.tokens), pure."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from farm.costs.caching import (
    MAX_BREAKPOINTS,
    Breakpoint,
    marks_its_own,
    min_cacheable_tokens,
    minimums,
    parse_minimums,
    plan_breakpoints,
    resolve_ttl,
)
from farm.costs.pricing import default_pricebook
from farm.costs.prompt_cache import cache_control, cache_ttl, with_breakpoints
from farm.costs.tokens import REQUEST_FRAMING, block_tokens, json_tokens, text_tokens
from farm.jobs import JobRequest
from farm.provider.body import wire_body
from farm.settings import QueueSpec, Settings

SONNET = "claude-sonnet-4-5"  # minimum 1,024
HAIKU = "claude-haiku-4-5"  # minimum 4,096


def long_text(tokens: int, letter: str = "s") -> str:
    return letter * (4 * tokens)


def body_of(model: str = SONNET, **fields: Any) -> dict[str, Any]:
    fields.setdefault("prompt", "Answer in one word.")
    return wire_body(model, JobRequest(**fields))


def marked(body: dict[str, Any]) -> int:
    return json.dumps(body).count('"cache_control"')


# --- the minimums table ---------------------------------------------------------------

@pytest.mark.parametrize(("model", "minimum"), [
    ("claude-haiku-4-5", 4096), ("claude-opus-4-5", 4096), ("claude-opus-4-6", 4096),
    ("claude-sonnet-4", 1024), ("claude-sonnet-4-5", 1024), ("claude-sonnet-4-6", 1024),
    ("claude-opus-4", 1024), ("claude-opus-4-1", 1024), ("claude-3-5-haiku", 2048),
    ("claude-sonnet-4-5-20250929", 1024),  # a dated snapshot: its base's row
    ("claude-sonnet-5-5", 4096), ("claude-no-such-model", 4096),  # unknown: the largest
])
def test_each_model_has_its_minimum_and_an_unknown_one_the_largest(model: str,
                                                                   minimum: int) -> None:
    assert min_cacheable_tokens(model) == minimum


def test_every_priced_model_has_a_minimum_of_its_own() -> None:
    assert set(default_pricebook()) <= set(minimums())
    assert minimums() is minimums()  # read once


def test_an_unknown_model_gets_the_largest_minimum_of_the_table_given() -> None:
    table = parse_minimums("model,min_cacheable_tokens,source,as_of\na,10,x,y\nb,30,x,y\n", "t")
    assert min_cacheable_tokens("c", table) == 30
    assert min_cacheable_tokens("a-20250101", table) == 10


@pytest.mark.parametrize(("text", "problem"), [
    ("model,tokens\n", "header must be model,min_cacheable_tokens,source,as_of"),
    ("model,min_cacheable_tokens,source,as_of\n", "no rows"),
    ("model,min_cacheable_tokens,source,as_of\na,1024,x\n", "line 2: expected 4 fields"),
    ("model,min_cacheable_tokens,source,as_of\na,1024,,y\n", "line 2, column 'source': empty"),
    ("model,min_cacheable_tokens,source,as_of\na,1024,x,y\na,2048,x,y\n",
     "line 3, column 'model': duplicate model 'a'"),
    ("model,min_cacheable_tokens,source,as_of\na,1e3,x,y\n",
     "line 2, column 'min_cacheable_tokens': '1e3' is not a whole number"),
    ("model,min_cacheable_tokens,source,as_of\na,0,x,y\n",
     "line 2, column 'min_cacheable_tokens': '0' is not a whole number"),
    ('model,min_cacheable_tokens,source,as_of\n"a,1,x,y\n', "malformed CSV"),
])
def test_a_bad_table_is_refused_naming_the_line_and_column(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^t: ") as raised:
        parse_minimums(text, "t")
    assert problem in str(raised.value)


# --- token estimates ------------------------------------------------------------------

def test_tokens_are_characters_over_four_rounded_up_without_the_cache_marker() -> None:
    assert (text_tokens(""), text_tokens("abcd"), text_tokens("abcde")) == (0, 1, 2)
    assert block_tokens({"type": "text", "text": "x" * 9}) == 3
    assert block_tokens("x" * 8) == 2
    tool = {"name": "t", "input_schema": {"type": "object"}}
    assert json_tokens(tool) == json_tokens({**tool, "cache_control": {"type": "ephemeral"}})
    image = {"type": "image", "source": {"type": "base64", "data": "x" * 400}}
    assert block_tokens(image) == json_tokens(image) > 100


# --- the plan -------------------------------------------------------------------------

def test_a_system_prompt_reaching_the_minimum_gets_one_breakpoint() -> None:
    body = body_of(system=long_text(1024 - REQUEST_FRAMING))
    plan = plan_breakpoints(body, SONNET, "5m")
    assert plan.breakpoints == (Breakpoint("system", 0, None, 1024),)
    assert plan.cached_tokens == 1024 and plan.minimum == 1024 and plan.ttl == "5m"


def test_a_prefix_one_token_short_of_the_minimum_gets_none() -> None:
    body = body_of(system=long_text(1023 - REQUEST_FRAMING))
    plan = plan_breakpoints(body, SONNET, "5m")
    assert plan.breakpoints == () and plan.cached_tokens == 0
    assert plan.note == "the stable prefix (~1,023 tokens) is under claude-sonnet-4-5's " \
                        "minimum of 1,024"


def test_the_minimum_is_the_models() -> None:
    body = body_of(system=long_text(2000))
    assert len(plan_breakpoints(body, SONNET, "1h").breakpoints) == 1
    assert plan_breakpoints(body, HAIKU, "1h").breakpoints == ()
    assert plan_breakpoints(body, "claude-unknown-9", "1h").breakpoints == ()


def test_caching_off_plans_nothing() -> None:
    plan = plan_breakpoints(body_of(system=long_text(9000)), SONNET, "off")
    assert plan.breakpoints == () and plan.note == "prompt caching is off"


def test_the_prompt_is_never_a_breakpoint_however_long() -> None:
    assert plan_breakpoints(body_of(prompt=long_text(9000)), SONNET, "5m").breakpoints == ()
    body = body_of(prompt=long_text(9000), documents=("short doc",))
    assert plan_breakpoints(body, SONNET, "5m").breakpoints == ()


def test_tools_are_marked_on_the_last_tool_only() -> None:
    tools = tuple({"name": f"t{i}", "description": long_text(400, "d"),
                   "input_schema": {"type": "object"}} for i in range(3))
    plan = plan_breakpoints(body_of(tools=tools), SONNET, "5m")
    expected = REQUEST_FRAMING + sum(json_tokens(t) for t in tools)
    assert plan.breakpoints == (Breakpoint("tools", 2, None, expected),)


def test_tools_then_system_then_documents_each_end_a_segment() -> None:
    tool = {"name": "t", "description": long_text(1100, "d"), "input_schema": {}}
    body = body_of(tools=(tool,), system=long_text(50), documents=("a" * 400, "b" * 800))
    points = plan_breakpoints(body, SONNET, "5m").breakpoints
    tools_end = REQUEST_FRAMING + json_tokens(tool)
    assert points == (
        Breakpoint("tools", 0, None, tools_end),
        Breakpoint("system", 0, None, tools_end + 50),
        Breakpoint("messages", 0, 0, tools_end + 50 + 4 + 100),
        Breakpoint("messages", 0, 1, tools_end + 50 + 4 + 300),
    )


def test_segments_before_the_prefix_reaches_the_minimum_are_not_marked() -> None:
    body = body_of(system=long_text(100), documents=(long_text(200, "a"), long_text(900, "b"),
                                                     long_text(10, "c")))
    points = plan_breakpoints(body, SONNET, "5m").breakpoints
    assert [(p.section, p.block) for p in points] == [("messages", 1), ("messages", 2)]
    assert points[0].prefix_tokens == REQUEST_FRAMING + 100 + 4 + 200 + 900


def test_at_most_four_the_longest_prefix_and_the_tools_and_system_ends_first() -> None:
    tool = {"name": "t", "description": long_text(1100, "d"), "input_schema": {}}
    documents = tuple(long_text(100, chr(ord("a") + i)) for i in range(8))
    body = body_of(tools=(tool,), system=long_text(10), documents=documents)
    points = plan_breakpoints(body, SONNET, "1h").breakpoints
    assert len(points) == MAX_BREAKPOINTS
    assert [(p.section, p.index, p.block) for p in points] == [
        ("tools", 0, None), ("system", 0, None), ("messages", 0, 6), ("messages", 0, 7)]


def test_with_documents_only_the_latest_four_are_marked() -> None:
    documents = tuple(long_text(1100, chr(ord("a") + i)) for i in range(6))
    points = plan_breakpoints(body_of(documents=documents), SONNET, "5m").breakpoints
    assert [p.block for p in points] == [2, 3, 4, 5]
    assert [p.prefix_tokens for p in points] == sorted(p.prefix_tokens for p in points)


def test_a_body_that_marks_its_own_cache_control_is_left_to_it() -> None:
    tool = {"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}
    body = body_of(tools=(tool,), system=long_text(5000))
    assert marks_its_own(body)
    plan = plan_breakpoints(body, SONNET, "5m")
    assert plan.breakpoints == () and "its own cache_control" in plan.note
    automatic = {**body_of(system=long_text(5000)), "cache_control": {"type": "ephemeral"}}
    assert marks_its_own(automatic) and plan_breakpoints(automatic, SONNET, "5m").breakpoints == ()
    in_message = body_of(documents=("d",))
    in_message["messages"][0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert marks_its_own(in_message)
    assert not marks_its_own(body_of(system=long_text(5000), documents=("d",)))


def test_a_system_given_as_blocks_is_marked_on_its_last_non_empty_block() -> None:
    body = body_of()
    body["system"] = [{"type": "text", "text": long_text(600)},
                      {"type": "text", "text": long_text(600)}]
    assert plan_breakpoints(body, SONNET, "5m").breakpoints == (
        Breakpoint("system", 1, None, REQUEST_FRAMING + 1200),)
    body["system"].append({"type": "text", "text": ""})  # an empty block is never marked
    assert plan_breakpoints(body, SONNET, "5m").breakpoints == ()


def test_earlier_turns_of_a_conversation_count_and_their_blocks_may_end_a_prefix() -> None:
    body = {"model": SONNET, "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": long_text(1100)}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": long_text(5000)}]}
    assert plan_breakpoints(body, SONNET, "5m").breakpoints == (
        Breakpoint("messages", 0, 0, REQUEST_FRAMING + 4 + 1100),)


# --- placing the breakpoints ----------------------------------------------------------

def test_a_system_string_becomes_one_marked_text_block() -> None:
    system = long_text(1500)
    body = body_of(system=system)
    before = copy.deepcopy(body)
    five = with_breakpoints(body, SONNET, "5m")
    assert five["system"] == [{"type": "text", "text": system,
                               "cache_control": {"type": "ephemeral"}}]
    hour = with_breakpoints(body, SONNET, "1h")
    assert hour["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body == before  # the body given is never changed
    assert {k: v for k, v in five.items() if k != "system"} == \
        {k: v for k, v in body.items() if k != "system"}


def test_tool_and_document_blocks_gain_the_marker_and_the_prompt_does_not() -> None:
    tool = {"name": "t", "description": long_text(1100, "d"), "input_schema": {}}
    body = body_of(tools=(tool,), documents=(long_text(300),), prompt="the question")
    before = copy.deepcopy(body)
    got = with_breakpoints(body, SONNET, "1h")
    assert got["tools"][0] == {**tool, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    content = got["messages"][0]["content"]
    assert content[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert content[1] == {"type": "text", "text": "the question"}
    assert marked(got) == 2 and body == before
    got["tools"][0]["cache_control"]["ttl"] = "changed"  # each marker is its own dict
    assert content[0]["cache_control"]["ttl"] == "1h"


def test_a_prefix_below_the_minimum_gets_no_cache_control() -> None:
    body = body_of(model=HAIKU, system=long_text(3000), documents=(long_text(500),))
    assert with_breakpoints(body, HAIKU, "5m") == body and marked(body) == 0
    assert with_breakpoints(body, HAIKU, "off") == body
    assert marked(with_breakpoints(body, SONNET, "5m")) > 0


def test_no_marker_when_caching_is_off() -> None:
    with pytest.raises(ValueError, match="off"):
        cache_control("off")


# --- the TTL --------------------------------------------------------------------------

@pytest.mark.parametrize(("request_ttl", "queue_ttl", "default", "expected"), [
    ("1h", "off", "5m", "1h"), ("off", "1h", "5m", "off"), (None, "1h", "5m", "1h"),
    (None, "off", "5m", "off"), (None, None, "5m", "5m"), (None, None, "off", "off"),
])
def test_the_job_then_its_queue_then_the_farm_say_the_ttl(
        request_ttl: Any, queue_ttl: Any, default: Any, expected: str) -> None:
    assert resolve_ttl(request_ttl, queue_ttl, default) == expected


def test_the_ttl_of_a_job_on_a_queue_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    queues = (QueueSpec(name="long", model=SONNET, complexity="complex", prompt_cache="1h"),
              QueueSpec(name="plain", model=HAIKU, complexity="simple"))
    settings = Settings(queues=queues)
    assert settings.prompt_cache == "5m"
    assert cache_ttl(JobRequest(prompt="p"), "long", settings) == "1h"
    assert cache_ttl(JobRequest(prompt="p"), "plain", settings) == "5m"
    assert cache_ttl(JobRequest(prompt="p", cache="off"), "long", settings) == "off"
    monkeypatch.setenv("FARM_PROMPT_CACHE", "off")
    assert cache_ttl(JobRequest(prompt="p"), "plain", Settings(queues=queues)) == "off"
    monkeypatch.setenv("FARM_PROMPT_CACHE", "10m")
    with pytest.raises(ValidationError, match="prompt_cache"):
        Settings()
    with pytest.raises(ValidationError, match="prompt_cache"):
        QueueSpec(name="q", model=SONNET, complexity="simple", prompt_cache="2h")  # type: ignore[arg-type]
