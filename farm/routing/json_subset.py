"""A small subset of JSON Schema, enough to check a model's JSON answer. Pure, no
dependency (``jsonschema`` is not installed).

Supported keywords, each with its JSON Schema meaning:

- ``type``: a name or a list of names among object, array, string, number, integer
  (a whole number: ``3`` or ``3.0``), boolean, null; booleans are not numbers;
- ``properties``: a schema per named member of an object;
- ``required``: names an object must have;
- ``items``: one schema every element of an array must satisfy;
- ``enum``: the value must equal one of the listed values (``1`` and ``True`` differ);
- ``additionalProperties``: ``false`` (no member beyond ``properties``), ``true``, or a
  schema the other members must satisfy.

Annotations (``title``, ``description``, ``$schema``, ``$id``, ``$comment``,
``examples``, ``default``) are ignored. Any other keyword is refused when the job is
submitted (``schema_problem``): a keyword the farm would not enforce is never accepted
silently. Problems name the path (``$.items[2].name``) and what was expected, never the
answer's values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

KEYWORDS = frozenset({"type", "properties", "required", "items", "enum",
                      "additionalProperties"})
ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "examples",
                         "default"})
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def schema_problem(schema: Any, path: str = "$") -> str | None:
    """What is wrong with ``schema`` as a schema of the subset, else None."""
    if not isinstance(schema, Mapping):
        return f"{path}: a schema must be a JSON object"
    unknown = sorted(set(schema) - KEYWORDS - ANNOTATIONS)
    if unknown:
        return (f"{path}: unsupported keyword(s) {', '.join(map(repr, unknown))}; supported: "
                f"{', '.join(sorted(KEYWORDS))}")
    kinds = schema.get("type")
    names = [kinds] if isinstance(kinds, str) else kinds
    if kinds is not None and (not isinstance(names, list) or not names
                              or any(n not in TYPES for n in names)):
        return f"{path}: type must be one of {', '.join(TYPES)} (or a list of them)"
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, Mapping):
            return f"{path}: properties must be an object of schemas"
        for name, sub in props.items():
            if problem := schema_problem(sub, f"{path}.{name}"):
                return problem
    required = schema.get("required")
    if required is not None and (not isinstance(required, list)
                                 or not all(isinstance(r, str) for r in required)):
        return f"{path}: required must be a list of names"
    if "items" in schema and (problem := schema_problem(schema["items"], f"{path}[]")):
        return problem
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        return f"{path}: enum must be a non-empty list"
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        return schema_problem(extra, f"{path}.*")
    return None


def _is(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or isinstance(value, int) or float(value).is_integer()


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check(value: Any, schema: Mapping[str, Any], path: str = "$") -> str | None:
    """The first way ``value`` fails ``schema`` (a valid schema of the subset), else None."""
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, k) for k in names):
            return f"{path}: expected {' or '.join(names)}, got {_kind_of(value)}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return f"{path}: not one of the {len(schema['enum'])} allowed values"
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                return f"{path}: missing required member {name!r}"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = props.get(name)
            if sub is None and extra is False:
                return f"{path}: member {name[:64]!r} is not allowed"
            sub = sub if sub is not None else (extra if isinstance(extra, Mapping) else None)
            if sub is not None and (problem := check(item, sub, f"{path}.{name[:64]}")):
                return problem
    if isinstance(value, list) and isinstance(items := schema.get("items"), Mapping):
        for i, item in enumerate(value):
            if problem := check(item, items, f"{path}[{i}]"):
                return problem
    return None


def _kind_of(value: Any) -> str:
    return next(k for k in ("null", "boolean", "integer", "number", "string", "array",
                            "object") if _is(value, k))


def strip_fence(text: str) -> str:
    """The text inside one Markdown code fence (```json … ```) that wraps the whole answer,
    else the text as it is (surrounding whitespace removed)."""
    found = _FENCE.match(text)
    return (found.group(1) if found else text).strip()


def json_problem(text: str, schema: Mapping[str, Any] | None) -> str | None:
    """Why ``text`` (a fence around it allowed) is not a JSON value satisfying ``schema``
    (None: any JSON value), else None."""
    try:
        value = json.loads(strip_fence(text))
    except json.JSONDecodeError as exc:  # its position, never the text
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (ValueError, RecursionError):
        return "not JSON: nested too deeply or out of range"
    return None if schema is None else check(value, schema)


def minimal_instance(schema: Mapping[str, Any]) -> Any:
    """A small value satisfying ``schema`` (a valid schema of the subset): its first enum
    value, else a value of its first type with the required members (the simulator's
    answer to a JSON request)."""
    if schema.get("enum"):
        return schema["enum"][0]
    kinds = schema.get("type")
    kind = (kinds if isinstance(kinds, str) else kinds[0]) if kinds else (
        "object" if "properties" in schema or "required" in schema
        else "array" if "items" in schema else "string")
    props: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    if kind == "object":
        return {name: minimal_instance(props.get(name) or (
            extra if isinstance(extra, Mapping) else {}))
                for name in schema.get("required") or ()}
    return {"array": [], "string": "ok", "number": 0, "integer": 0, "boolean": True,
            "null": None}[kind]
