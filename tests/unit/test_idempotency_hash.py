"""Idempotent submit's pure part (farm.reliability.idempotency): the request hash is the
request's and nothing else's (not its key, not how its JSON was written), and a held key
gives the holder's job for the same request and a conflict for any other. No services."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from farm.client import InvalidJobError, validate
from farm.jobs import JobRequest
from farm.reliability.idempotency import (
    Holder,
    IdempotencyConflictError,
    batch_conflicts,
    canonical_json,
    first_of_key,
    keyed_hash,
    request_hash,
    resolve,
)
from farm.settings import Settings

FULL: dict[str, Any] = {
    "prompt": "Summarise the  report.\n", "system": "Be brief.", "max_tokens": 300,
    "tenant": "search", "metadata": {"b": "2", "a": "1"}, "temperature": 0.5,
    "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {
        "q": {"type": "string"}, "n": {"type": "integer"}}}}],
    "max_cost_usd": "0.50", "deadline": "2026-12-01T12:00:00Z", "idempotency_key": "k-1",
}


def _hash(**fields: Any) -> str:
    return request_hash(JobRequest(**fields))


def _reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_the_hash_ignores_key_order_at_every_depth() -> None:
    reordered = _reordered(FULL)
    assert list(reordered) != list(FULL)
    assert list(reordered["tools"][0]["input_schema"]["properties"]) == ["n", "q"]
    assert _hash(**reordered) == _hash(**FULL)


def test_the_hash_ignores_the_json_texts_whitespace_but_not_the_prompts() -> None:
    compact = json.dumps(FULL, separators=(",", ":"))
    spaced = json.dumps(FULL, indent=4, sort_keys=True)
    assert compact != spaced
    parsed = [request_hash(JobRequest.model_validate_json(text)) for text in (compact, spaced)]
    assert parsed[0] == parsed[1] == _hash(**FULL)
    assert _hash(**{**FULL, "prompt": "Summarise the report.\n"}) != _hash(**FULL)


def test_the_hash_leaves_the_key_out_and_defaults_given_or_not_alike() -> None:
    assert _hash(**{**FULL, "idempotency_key": "another"}) == _hash(**FULL)
    assert _hash(**{k: v for k, v in FULL.items() if k != "idempotency_key"}) == _hash(**FULL)
    assert "k-1" not in canonical_json(JobRequest(**FULL))
    assert _hash(prompt="x") == _hash(prompt="x", max_tokens=1024, priority="normal",
                                      tenant="default", metadata={}, tools=[])


def test_equal_values_written_differently_hash_alike() -> None:
    assert _hash(**{**FULL, "max_cost_usd": "0.5"}) == _hash(**FULL)
    assert _hash(**{**FULL, "deadline": "2026-12-01T13:00:00+01:00"}) == _hash(**FULL)
    assert _hash(**{**FULL, "temperature": 0.50}) == _hash(**FULL)


@pytest.mark.parametrize("change", [
    {"prompt": "Summarise the report, please."}, {"system": None}, {"max_tokens": 301},
    {"tenant": "ads"}, {"metadata": {"a": "1"}}, {"temperature": 0.6},
    {"max_cost_usd": "0.51"}, {"deadline": "2026-12-01T12:00:01Z"}, {"priority": "high"},
    {"documents": ["a document"]}, {"model": "claude-haiku-4-5"},
])
def test_any_difference_in_the_request_changes_the_hash(change: dict[str, Any]) -> None:
    assert _hash(**{**FULL, **change}) != _hash(**FULL)


def test_the_hash_is_sha256_hex_and_stored_only_for_keyed_jobs() -> None:
    digest = _hash(**FULL)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert keyed_hash(JobRequest(**FULL)) == digest
    assert keyed_hash(JobRequest(prompt="no key")) is None


def test_a_held_key_gives_the_holder_for_the_same_request() -> None:
    holder = Holder(uuid.uuid4(), _hash(**FULL))
    assert resolve("k-1", "search", _hash(**_reordered(FULL)), holder) == holder.id


@pytest.mark.parametrize("held_hash", [_hash(prompt="something else"), None])
def test_a_held_key_with_a_different_request_is_a_conflict_naming_key_and_holder(
        held_hash: str | None) -> None:
    holder = Holder(uuid.uuid4(), held_hash)
    with pytest.raises(IdempotencyConflictError) as conflict:
        resolve("k-1", "search", _hash(**FULL), holder)
    assert (conflict.value.key, conflict.value.tenant, conflict.value.holder) == (
        "k-1", "search", holder.id)
    assert "'k-1'" in str(conflict.value) and str(holder.id) in str(conflict.value)
    assert "Summarise" not in str(conflict.value)  # the request is never quoted
    assert isinstance(conflict.value, ValueError)


def test_in_a_batch_the_first_job_of_each_key_and_tenant_is_the_job() -> None:
    batch = [JobRequest(prompt="a", idempotency_key="k"), JobRequest(prompt="b"),
             JobRequest(prompt="a", idempotency_key="k"),
             JobRequest(prompt="c", idempotency_key="k", tenant="other"),
             JobRequest(prompt="b")]
    assert first_of_key(batch) == [0, 1, 0, 3, 4]
    assert batch_conflicts(batch) == []


def test_a_batch_repeating_a_key_with_another_request_names_the_later_job() -> None:
    batch = [JobRequest(prompt="a", idempotency_key="k"),
             JobRequest(prompt="b", idempotency_key="k"),
             JobRequest(prompt="a", idempotency_key="k")]
    problems = batch_conflicts(batch)
    assert [(i, field) for i, field, _ in problems] == [(1, "idempotency_key")]
    assert "'k'" in problems[0][2] and "different request" in problems[0][2]


def test_validate_refuses_a_batch_with_a_conflicting_key_before_anything_is_written() -> None:
    jobs = [{"prompt": "a", "idempotency_key": "k"}, {"prompt": "b", "idempotency_key": "k"}]
    with pytest.raises(InvalidJobError) as refused:
        validate(jobs, Settings())
    assert [(i, field) for i, field, _ in refused.value.problems] == [(1, "idempotency_key")]
    # other problems first: the conflict check sees only valid jobs, by their own index
    with pytest.raises(InvalidJobError) as refused:
        validate([{"prompt": ""}, *jobs], Settings())
    assert [field for _, field, _ in refused.value.problems] == ["prompt"]
    assert len(validate([jobs[0], jobs[0]], Settings())) == 2


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\t"])
def test_a_malformed_key_is_a_field_error(key: str) -> None:
    with pytest.raises(InvalidJobError) as refused:
        validate([{"prompt": "a", "idempotency_key": key}], Settings())
    assert [field for _, field, _ in refused.value.problems] == ["idempotency_key"]
