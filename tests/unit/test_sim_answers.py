"""The simulator's answers to JSON, self-check and second-opinion requests, and its weak
model's failures (farm.sim.answers): each is what the farm's own checks expect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from farm.jobs import JobRequest
from farm.routing.escalation import PASS_LINE, SignalKind, as_sent, judge
from farm.routing.second_opinion import opinion_request, parse_opinion
from farm.sim.answers import WEAK_KINDS, Shaped, shape, system_text, weak_kind
from farm.sim.server import SimConfig, parse_markers

HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
WEAK = ("haiku",)
PLAN = (40, "end_turn")
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"},
                                           "tags": {"type": "array"}},
          "required": ["n", "tags"], "additionalProperties": False}


def answer(request: JobRequest, model: str = HAIKU, plan: tuple[int, str] = PLAN,
           weak: tuple[str, ...] = WEAK) -> Shaped | None:
    sent = as_sent(request)
    return shape(model, sent.system, sent.prompt, sent.max_tokens, 12345, plan, weak)


def signal(request: JobRequest, model: str = HAIKU) -> SignalKind | None:
    shaped = answer(request, model)
    assert shaped is not None
    found = judge(request, shaped.stop_reason, shaped.text, short_budget=1024).signal
    return None if found is None else found.kind


def test_the_config_names_the_weak_models() -> None:
    assert SimConfig().weak_models == ("haiku",)
    assert SimConfig(weak_models=("sonnet",)).weak_models == ("sonnet",)


def test_a_plain_request_is_left_to_the_plain_answer() -> None:
    assert answer(JobRequest(prompt="hello")) is None
    assert answer(JobRequest(prompt="hello [[sim:weak=refusal]]"), SONNET) is None
    # the weak marker is not one of the numeric markers
    assert parse_markers("[[sim:weak=refusal]]") == {}


def test_weak_kind_applies_only_to_weak_models() -> None:
    for kind in WEAK_KINDS:
        assert weak_kind(f"x [[sim:weak={kind}]]", HAIKU, WEAK) == kind
        assert weak_kind(f"x [[sim:weak={kind}]]", SONNET, WEAK) is None
        assert weak_kind(f"x [[sim:weak={kind}]]", SONNET, ("sonnet",)) == kind
    assert weak_kind("[[sim:weak=bogus]]", HAIKU, WEAK) is None
    assert weak_kind("nothing", HAIKU, WEAK) is None


@pytest.mark.parametrize(("kind", "request_fields", "expected"), [
    ("refusal", {}, SignalKind.REFUSAL),
    ("max_tokens", {"max_tokens": 200}, SignalKind.MAX_TOKENS),
    ("bad_json", {"response_format": "json"}, SignalKind.INVALID_JSON),
    ("bad_json", {"json_schema": SCHEMA, "self_check": True}, SignalKind.INVALID_JSON),
    ("self_check_fail", {"self_check": True}, SignalKind.SELF_CHECK),
    ("self_check_fail", {"self_check": True, "json_schema": SCHEMA}, SignalKind.SELF_CHECK),
])
def test_each_weak_marker_gives_its_signal_on_haiku_and_none_on_sonnet(
        kind: str, request_fields: dict[str, Any], expected: SignalKind) -> None:
    request = JobRequest(prompt=f"task [[sim:weak={kind}]]", **request_fields)
    assert signal(request) is expected
    sonnet = answer(request, SONNET)
    if sonnet is not None:  # a plain request is the plain answer, a fine one
        assert judge(request, sonnet.stop_reason, sonnet.text, short_budget=1024).signal is None


def test_weak_refusal_and_max_tokens_in_the_wire_terms() -> None:
    refused = answer(JobRequest(prompt="[[sim:weak=refusal]]"))
    assert refused is not None and refused.stop_reason == "refusal"
    assert refused.output_tokens == 8
    cut = answer(JobRequest(prompt="[[sim:weak=max_tokens]]", max_tokens=50))
    assert cut is not None and (cut.output_tokens, cut.stop_reason) == (50, "max_tokens")


def test_json_requests_get_json_that_validates() -> None:
    free = answer(JobRequest(prompt="list it", response_format="json"))
    assert free is not None and isinstance(json.loads(free.text), dict)
    typed = answer(JobRequest(prompt="list it", json_schema=SCHEMA))
    assert typed is not None and json.loads(typed.text) == {"n": 0, "tags": []}
    assert typed.stop_reason == "end_turn" and typed.output_tokens == -(-len(typed.text) // 4)
    assert signal(JobRequest(prompt="x", json_schema=SCHEMA)) is None
    assert signal(JobRequest(prompt="x", json_schema=SCHEMA), SONNET) is None


def test_self_check_requests_end_with_a_pass_line() -> None:
    checked = answer(JobRequest(prompt="sum it", self_check=True))
    assert checked is not None and checked.text.endswith("\n" + PASS_LINE)
    both = answer(JobRequest(prompt="sum it", self_check=True, json_schema=SCHEMA))
    assert both is not None and both.text == '{"n": 0, "tags": []}\n' + PASS_LINE
    assert signal(JobRequest(prompt="x", self_check=True, response_format="json")) is None


def test_a_text_that_cannot_fit_runs_out_of_tokens_without_its_line() -> None:
    tiny = answer(JobRequest(prompt="x", json_schema=SCHEMA, self_check=True, max_tokens=3))
    assert tiny is not None and tiny.stop_reason == "max_tokens" and tiny.output_tokens == 3
    assert "SELF-CHECK" not in tiny.text and len(tiny.text) == 12
    # prose planned to the whole budget is the plain answer: cut, no self-check line
    assert answer(JobRequest(prompt="x", self_check=True), plan=(100, "max_tokens")) is None
    # a JSON answer whose self-check line does not fit ends at the JSON
    snug = answer(JobRequest(prompt="x", response_format="json", self_check=True,
                             max_tokens=10))
    assert snug is not None and "SELF-CHECK" not in snug.text


@pytest.mark.parametrize(("prompt", "said"), [
    ("Prove it [[sim:opinion=complex]]", "complex"),
    ("Translate it", "simple"),
    # the job's other markers do not touch the rubric call
    ("Translate [[sim:weak=refusal]] [[sim:weak=max_tokens]]", "simple"),
])
def test_the_second_opinion_call_is_answered_by_its_marker(prompt: str, said: str) -> None:
    ask = opinion_request(JobRequest(prompt=prompt, max_tokens=3000))
    shaped = shape(HAIKU, ask.system, ask.prompt, ask.max_tokens, 7, PLAN, WEAK)
    assert shaped is not None and shaped.stop_reason == "end_turn"
    assert json.loads(shaped.text) == {"complexity": said}
    assert parse_opinion(shaped.text) is not None and parse_opinion(shaped.text) == said


def test_system_text_reads_strings_and_blocks() -> None:
    assert system_text("abc") == "abc"
    assert system_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, 3]) == \
        "a\nb"
    assert system_text(None) == ""


def test_an_unreadable_schema_gives_a_free_json_object() -> None:
    from farm.routing.escalation import JSON_INSTRUCTION, SCHEMA_LEAD

    for line in ("{broken", '{"minimum": 1}', "[1]"):
        shaped = shape(HAIKU, f"{JSON_INSTRUCTION}\n{SCHEMA_LEAD}{line}", "x", 100, 1, PLAN,
                       WEAK)
        assert shaped is not None and "answer" in json.loads(shaped.text)
