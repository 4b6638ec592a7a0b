"""The memo key (farm.memo.key): canonical (key order, JSON whitespace, 1 vs 1.0 do not
matter), complete (every field that reaches the provider changes it), and every JobRequest
field accounted for, so that a new field cannot be left out of the key unnoticed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from farm.costs.prompt_cache import with_breakpoints
from farm.jobs import JobRequest
from farm.memo.key import IN_BODY, NOT_IN_KEY, VIA_MODEL, canonical_json, memo_key_of
from farm.provider.body import wire_body
from farm.routing.escalation import as_sent

MODEL = "claude-haiku-4-5"
BASE: dict[str, Any] = {"prompt": "Name three primes."}
TOOL = {"name": "lookup", "description": "Look a word up.",
        "input_schema": {"type": "object", "properties": {"word": {"type": "string"}},
                         "required": ["word"]}}


def key_of(fields: dict[str, Any], model: str = MODEL) -> str:
    """The key of a job as the worker computes it: the body of the request as sent."""
    return memo_key_of(wire_body(model, as_sent(JobRequest.model_validate(fields))))


# a value other than the default for each field that reaches the body
CHANGED: dict[str, Any] = {
    "prompt": "Name four primes.",
    "system": "Answer in French.",
    "documents": ("Primes are integers greater than 1 …",),
    "max_tokens": 64,
    "tools": (TOOL,),
    "tool_choice": {"type": "any"},
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 40,
    "stop_sequences": ("END",),
    "response_format": "json",
    "json_schema": {"type": "array", "items": {"type": "integer"}},
    "self_check": True,
}

# a value other than the default for each field left out of the body, for its reason
UNCHANGED: dict[str, Any] = {
    "tenant": "acme",
    "priority": "high",
    "metadata": {"team": "search"},
    "idempotency_key": "order-17",
    "memo": True,
    "memo_ttl_s": 60,
    "batch": True,
    "deadline": datetime(2030, 1, 1, tzinfo=UTC),
    "cache": "1h",
    "escalate": False,
    "max_cost_usd": Decimal("0.5"),
    "allow_fallback": True,
    # these pick the model, which the worker passes in: the same model, the same key
    "model": "claude-sonnet-5-5",
    "complexity": "complex",
    "queue": "sonnet-complex",
}


def test_every_field_is_classified_once() -> None:
    fields = set(JobRequest.model_fields)
    parts = [set(IN_BODY), set(VIA_MODEL), set(NOT_IN_KEY)]
    assert set().union(*parts) == fields, "classify the new field in farm.memo.key"
    assert sum(map(len, parts)) == len(fields), "a field is classified twice"
    assert all(reason.strip() for reason in (*VIA_MODEL.values(), *NOT_IN_KEY.values()))
    # and the tests below try each of them
    assert set(CHANGED) == IN_BODY
    assert set(UNCHANGED) == set(NOT_IN_KEY) | set(VIA_MODEL)


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_every_field_that_reaches_the_provider_changes_the_key(field: str) -> None:
    assert key_of({**BASE, field: CHANGED[field]}) != key_of(BASE)


@pytest.mark.parametrize("field", sorted(UNCHANGED))
def test_a_field_left_out_really_does_not_reach_the_provider(field: str) -> None:
    """Should one of them start to reach the body, this fails: move it to IN_BODY."""
    changed = JobRequest.model_validate({**BASE, field: UNCHANGED[field]})
    assert wire_body(MODEL, as_sent(changed)) == wire_body(
        MODEL, as_sent(JobRequest.model_validate(BASE)))
    assert key_of({**BASE, field: UNCHANGED[field]}) == key_of(BASE)


def test_the_model_is_in_the_key() -> None:
    assert key_of(BASE, "claude-sonnet-5-5") != key_of(BASE, MODEL)


def test_each_value_of_a_field_is_its_own_key() -> None:
    keys = {key_of({**BASE, "temperature": t}) for t in (0.0, 0.1, 0.2, 0.7, 1.0)}
    keys |= {key_of({**BASE, "stop_sequences": s}) for s in (("a",), ("a", "b"), ("b", "a"))}
    assert len(keys) == 8


def test_key_order_does_not_matter_at_any_depth() -> None:
    one = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
           "tools": [{"name": "t", "input_schema": {"type": "object", "required": ["a"]}}]}
    two = {"tools": [{"input_schema": {"required": ["a"], "type": "object"}, "name": "t"}],
           "messages": [{"content": "x", "role": "user"}], "max_tokens": 5, "model": MODEL}
    assert memo_key_of(one) == memo_key_of(two)
    reordered = {**TOOL, "input_schema": dict(reversed(TOOL["input_schema"].items()))}
    assert key_of({**BASE, "tools": (dict(reversed(reordered.items())),)}) == key_of(
        {**BASE, "tools": (TOOL,)})


def test_whitespace_of_a_tool_schema_as_json_text_does_not_matter() -> None:
    compact = json.dumps(TOOL, separators=(",", ":"))
    pretty = json.dumps(TOOL, indent=4)
    assert compact != pretty
    assert key_of({**BASE, "tools": (json.loads(pretty),)}) == key_of(
        {**BASE, "tools": (json.loads(compact),)})
    # whitespace inside a text is the text's own: another description, another key
    spaced = {**TOOL, "description": "Look a  word up."}
    assert key_of({**BASE, "tools": (spaced,)}) != key_of({**BASE, "tools": (TOOL,)})


def test_numbers_count_by_their_value() -> None:
    body = {"model": MODEL, "max_tokens": 5, "temperature": 1}
    assert memo_key_of(body) == memo_key_of({**body, "temperature": 1.0})
    assert memo_key_of({**body, "top_p": 0.5}) == memo_key_of({**body, "top_p": 0.50})
    assert memo_key_of({**body, "x": -0.0}) == memo_key_of({**body, "x": 0})
    assert memo_key_of({**body, "temperature": 0.5}) != memo_key_of(body)
    # a boolean is no number
    assert memo_key_of({**body, "x": True}) != memo_key_of({**body, "x": 1})
    schema = {**TOOL, "input_schema": {"type": "integer", "minimum": 1, "maximum": 10}}
    as_float = {**TOOL, "input_schema": {"type": "integer", "minimum": 1.0, "maximum": 1e1}}
    assert key_of({**BASE, "tools": (schema,)}) == key_of({**BASE, "tools": (as_float,)})
    assert key_of({**BASE, "temperature": 1}) == key_of({**BASE, "temperature": 1.0})


def test_the_canonical_text_is_compact_sorted_and_keeps_unicode() -> None:
    text = canonical_json({"b": [1.0, 2.5, (3,)], "a": "naïve  text", "c": None})
    assert text == '{"a":"naïve  text","b":[1,2.5,[3]],"c":null}'
    key = memo_key_of({"a": 1})
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_what_json_cannot_hold_is_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="memo key cannot hold"):
        memo_key_of({"x": bad})


def test_prompt_cachings_breakpoints_are_not_in_the_key() -> None:
    """The key is of wire_body, before cache_control is added: caching changes the price."""
    request = as_sent(JobRequest.model_validate({**BASE, "system": "policy " * 10_000}))
    body = wire_body(MODEL, request)
    cached = with_breakpoints(body, MODEL, "1h")
    assert "cache_control" in json.dumps(cached)
    assert memo_key_of(body) == key_of({**BASE, "system": "policy " * 10_000})
