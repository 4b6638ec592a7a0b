"""The simulator's answers to what the farm asks for beyond plain text: JSON, a self-check,
a second opinion, and the weak model's failures that make the farm escalate. Pure and
deterministic; ``farm.sim.server`` serves them.

- A second-opinion call (its system prompt holds ``farm.routing.second_opinion.TAG``):
  ``{"complexity":"complex"}`` when the job's text holds ``[[sim:opinion=complex]]``, else
  ``{"complexity":"simple"}``; no other marker applies to it.
- ``[[sim:weak=KIND]]`` on a model whose id contains one of ``weak_models`` (default
  "haiku"): KIND ``refusal`` (stop_reason "refusal"), ``max_tokens`` (the whole max_tokens,
  stop_reason "max_tokens"), ``bad_json`` (prose where JSON was asked), ``self_check_fail``
  (the final line "SELF-CHECK: FAIL"). Other models answer as if it were not there.
- A JSON request (the farm's ``JSON_INSTRUCTION`` in the system prompt): a JSON object,
  the schema's minimal instance when the instruction carries one
  (farm.routing.json_subset.minimal_instance).
- A self-check request (``SELF_CHECK_INSTRUCTION``): the text, then "SELF-CHECK: PASS".

Output tokens are the text's characters / 4, rounded up; a text longer than max_tokens
allows is cut there, with stop_reason "max_tokens" (and no self-check line); prose whose
planned size reaches max_tokens is the plain answer (cut, no self-check line).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from farm.routing.escalation import (
    FAIL_LINE,
    JSON_INSTRUCTION,
    PASS_LINE,
    SCHEMA_LEAD,
    SELF_CHECK_INSTRUCTION,
)
from farm.routing.json_subset import minimal_instance, schema_problem
from farm.routing.second_opinion import TAG as OPINION_TAG
from farm.sim.content import make_text

WEAK_KINDS = ("refusal", "max_tokens", "bad_json", "self_check_fail")
_WEAK = re.compile(r"\[\[sim:weak=(refusal|max_tokens|bad_json|self_check_fail)\]\]")
OPINION_MARKER = "[[sim:opinion=complex]]"
REFUSAL_TEXT = "I can't help with that request."


@dataclass(frozen=True)
class Shaped:
    text: str
    output_tokens: int
    stop_reason: str  # "end_turn", "max_tokens" or "refusal"


def system_text(system: Any) -> str:
    """A request's system prompt as text (a string, or a list of text blocks)."""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return ""


def weak_kind(prompt: str, model: str, weak_models: Sequence[str]) -> str | None:
    """The ``[[sim:weak=KIND]]`` marker's kind when it applies to ``model``."""
    found = _WEAK.search(prompt) if "[[sim:weak=" in prompt else None
    return found.group(1) if found and any(w in model for w in weak_models) else None


def _schema(system: str) -> dict[str, Any] | None:
    for line in system.split("\n"):
        if line.startswith(SCHEMA_LEAD):
            try:
                schema = json.loads(line[len(SCHEMA_LEAD):])
            except ValueError:
                return None
            return schema if isinstance(schema, dict) and not schema_problem(schema) else None
    return None


def _fit(text: str, max_tokens: int) -> Shaped:
    tokens = max(1, -(-len(text) // 4))
    if tokens <= max_tokens:
        return Shaped(text, tokens, "end_turn")
    return Shaped(text[:4 * max_tokens], max_tokens, "max_tokens")


def shape(model: str, system: Any, prompt: str, max_tokens: int, digest: int,
          planned: tuple[int, str], weak_models: Sequence[str]) -> Shaped | None:
    """The answer when the request is one of the module's cases, else None (the plain
    lorem answer of ``planned``: its (output tokens, stop_reason))."""
    sys_text = system_text(system)
    if OPINION_TAG in sys_text:
        said = "complex" if OPINION_MARKER in prompt else "simple"
        return _fit(json.dumps({"complexity": said}, separators=(",", ":")), max_tokens)
    weak = weak_kind(prompt, model, weak_models)
    if weak == "refusal":
        return Shaped(REFUSAL_TEXT, min(8, max_tokens), "refusal")
    if weak == "max_tokens":
        return Shaped(make_text(digest, max_tokens), max_tokens, "max_tokens")
    wants_json, checks = JSON_INSTRUCTION in sys_text, SELF_CHECK_INSTRUCTION in sys_text
    if not (wants_json or checks or weak) or (not wants_json and planned[1] == "max_tokens"):
        return None  # prose that runs out of tokens ends without a self-check line
    if wants_json and weak != "bad_json":
        schema = _schema(sys_text)
        body = json.dumps(minimal_instance(schema) if schema is not None
                          else {"answer": make_text(digest, 8)})
    else:
        body = make_text(digest, min(planned[0], 200) if wants_json else planned[0])
    if not checks:
        return _fit(body, max_tokens)
    line = FAIL_LINE if weak == "self_check_fail" else PASS_LINE
    answer = _fit(f"{body}\n{line}", max_tokens)
    return answer if answer.stop_reason == "end_turn" else _fit(body, max_tokens)
