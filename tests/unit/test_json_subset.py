"""The JSON Schema subset that checks a model's JSON answer (farm.routing.json_subset)."""

from __future__ import annotations

from typing import Any

import pytest

from farm.jobs import JobRequest, problems
from farm.routing.json_subset import (
    check,
    json_problem,
    minimal_instance,
    schema_problem,
    strip_fence,
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array",
                                                    "items": {"enum": ["a", "b"]}}},
          "required": ["name"], "additionalProperties": False}


@pytest.mark.parametrize("schema", [
    {}, {"type": "string"}, {"type": ["string", "null"]}, PERSON,
    {"title": "t", "description": "d", "$schema": "x", "$id": "y", "$comment": "c",
     "examples": [1], "default": 1},
    {"additionalProperties": {"type": "number"}}, {"items": {}}, {"enum": [1, "x", None]},
])
def test_schemas_of_the_subset_are_accepted(schema: dict[str, Any]) -> None:
    assert schema_problem(schema) is None


@pytest.mark.parametrize(("schema", "found"), [
    ([], "must be a JSON object"),
    ({"minimum": 1}, "unsupported keyword(s) 'minimum'"),
    ({"type": "object", "properties": {"a": {"pattern": "x"}}}, "$.a: unsupported"),
    ({"type": "float"}, "type must be one of"),
    ({"type": []}, "type must be one of"),
    ({"type": 3}, "type must be one of"),
    ({"properties": []}, "properties must be an object"),
    ({"required": "a"}, "required must be a list"),
    ({"required": [1]}, "required must be a list"),
    ({"items": {"oneOf": []}}, "$[]: unsupported"),
    ({"enum": []}, "enum must be a non-empty list"),
    ({"enum": "a"}, "enum must be a non-empty list"),
    ({"additionalProperties": {"format": "x"}}, "$.*: unsupported"),
    ({"additionalProperties": 3}, "must be a JSON object"),
])
def test_schemas_outside_the_subset_are_refused_saying_where(schema: Any, found: str) -> None:
    problem = schema_problem(schema)
    assert problem is not None and found in problem


@pytest.mark.parametrize(("value", "kind", "ok"), [
    ({}, "object", True), ([], "object", False), ([], "array", True), ("x", "string", True),
    (1, "integer", True), (1.0, "integer", True), (1.5, "integer", False),
    (1.5, "number", True), (1, "number", True), (True, "number", False),
    (True, "integer", False), (True, "boolean", True), (0, "boolean", False),
    (None, "null", True), ("", "null", False),
])
def test_types(value: Any, kind: str, ok: bool) -> None:
    assert (check(value, {"type": kind}) is None) is ok


def test_a_list_of_types_takes_any_of_them() -> None:
    assert check(None, {"type": ["string", "null"]}) is None
    assert check(3, {"type": ["string", "null"]}) == "$: expected string or null, got integer"


def test_objects_properties_required_and_additional() -> None:
    assert check({"name": "x", "age": 3, "tags": ["a", "b"]}, PERSON) is None
    assert check({"age": 3}, PERSON) == "$: missing required member 'name'"
    assert check({"name": 1}, PERSON) == "$.name: expected string, got integer"
    assert check({"name": "x", "extra": 1}, PERSON) == "$: member 'extra' is not allowed"
    assert check({"name": "x", "tags": ["a", "c"]}, PERSON) == \
        "$.tags[1]: not one of the 2 allowed values"
    assert check({"a": 1, "b": "x"}, {"additionalProperties": {"type": "integer"}}) == \
        "$.b: expected integer, got string"
    assert check({"a": 1}, {"additionalProperties": True}) is None
    assert check([1, "x"], {"items": {"type": "integer"}}) == \
        "$[1]: expected integer, got string"


def test_enum_compares_as_json_does() -> None:
    assert check(1.0, {"enum": [1]}) is None
    assert check(True, {"enum": [1]}) is not None
    assert check(1, {"enum": [True]}) is not None
    assert check({"a": [1, 2]}, {"enum": [{"a": [1, 2]}]}) is None
    assert check({"a": [1, 3]}, {"enum": [{"a": [1, 2]}]}) is not None
    assert check([1], {"enum": [[1, 2]]}) is not None
    assert check({"b": 1}, {"enum": [{"a": 1}]}) is not None


def test_problems_never_quote_the_answers_values() -> None:
    secret = "hunter2-secret"
    for value, schema in (({"name": secret}, {"properties": {"name": {"enum": ["x"]}}}),
                          ([secret], {"items": {"type": "integer"}}), (secret, {"enum": [1]})):
        problem = check(value, schema)
        assert problem is not None and secret not in problem
    problem = json_problem('{"x": "hunter2-secret"', None)
    assert problem is not None and secret not in problem


@pytest.mark.parametrize(("text", "inner"), [
    ('{"a": 1}', '{"a": 1}'),
    ('  \n{"a": 1}\n ', '{"a": 1}'),
    ('```json\n{"a": 1}\n```', '{"a": 1}'),
    ('```\n[1]\n```\n', "[1]"),
    ('```JSON  \n{"a":\n 1}```', '{"a":\n 1}'),
    ('Here:\n```json\n{"a": 1}\n```', 'Here:\n```json\n{"a": 1}\n```'),
])
def test_strip_fence(text: str, inner: str) -> None:
    assert strip_fence(text) == inner


def test_json_problem() -> None:
    assert json_problem('```json\n{"name": "x"}\n```', PERSON) is None
    assert json_problem("[1, 2]", None) is None
    assert json_problem("Sure! Here it is", None) == \
        "not JSON: Expecting value at line 1 column 1"
    assert json_problem('{"age": 1}', PERSON) == "$: missing required member 'name'"
    assert json_problem("[" * 100_000 + "]" * 100_000, None) is not None


@pytest.mark.parametrize("schema", [
    PERSON, {"type": "string"}, {"type": ["null", "string"]}, {"enum": ["z"]}, {},
    {"items": {"type": "integer"}}, {"required": ["a"]},
    {"required": ["a"], "additionalProperties": {"type": "boolean"}},
    {"type": "object", "properties": {"n": {"type": "object", "required": ["m"],
                                            "properties": {"m": {"type": "number"}}}},
     "required": ["n"]},
    {"type": "integer"}, {"type": "boolean"}, {"type": "null"}, {"type": "array"},
])
def test_minimal_instances_satisfy_their_schema(schema: dict[str, Any]) -> None:
    assert check(minimal_instance(schema), schema) is None


def test_a_job_with_a_schema_outside_the_subset_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError) as refused:
        JobRequest(prompt="p", json_schema={"type": "object", "minItems": 1})
    assert problems(refused.value) == [
        ("json_schema", "$: unsupported keyword(s) 'minItems'; supported: "
                        "additionalProperties, enum, items, properties, required, type")]
    with pytest.raises(ValueError, match="NUL"):
        JobRequest(prompt="p", json_schema={"enum": ["a\x00"]})
    assert JobRequest(prompt="p", json_schema=PERSON).wants_json
    assert JobRequest(prompt="p", response_format="json").wants_json
    assert not JobRequest(prompt="p").wants_json
    with pytest.raises(ValueError):
        JobRequest(prompt="p", response_format="xml")  # type: ignore[arg-type]
