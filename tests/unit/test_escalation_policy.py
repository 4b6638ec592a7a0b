"""Escalation's pure parts (farm.routing.escalation): what the farm asks for, the signals an
answer shows, who escalates where, and the decision with its cost cap."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from farm.costs.estimate import CapCheck, worst_case
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest
from farm.routing.escalation import (
    FAIL_LINE,
    JSON_INSTRUCTION,
    PASS_LINE,
    SCHEMA_LEAD,
    SELF_CHECK_INSTRUCTION,
    Action,
    Signal,
    SignalKind,
    as_sent,
    escalation_target,
    instructions,
    judge,
    out_of_depth,
    should_escalate,
    split_self_check,
)
from farm.settings import DEFAULT_QUEUES, QueueSpec

SHORT = 1024
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
SIMPLE, COMPLEX = DEFAULT_QUEUES
CASCADE = QueueSpec(name="cascade", model="claude-haiku-4-5", complexity="simple",
                    escalate_to="deep")
DEEP = QueueSpec(name="deep", model="claude-opus-4-5", complexity="complex")
QUEUES = (SIMPLE, COMPLEX, CASCADE, DEEP)


def req(**fields: Any) -> JobRequest:
    return JobRequest(prompt="p", **fields)


# --- what the farm asks for -------------------------------------------------------------

def test_a_plain_job_is_sent_as_it_is() -> None:
    plain = req(system="be brief")
    assert instructions(plain) is None and as_sent(plain) is plain


def test_json_and_schema_instructions_follow_the_system_prompt() -> None:
    sent = as_sent(req(system="be brief", json_schema=SCHEMA))
    assert sent.system is not None
    head, _, rest = sent.system.partition("\n\n")
    assert head == "be brief"
    first, second = rest.split("\n")
    assert first == JSON_INSTRUCTION
    assert second.startswith(SCHEMA_LEAD) and json.loads(second[len(SCHEMA_LEAD):]) == SCHEMA
    assert as_sent(req(response_format="json")).system == JSON_INSTRUCTION


def test_self_check_instruction_and_both_together() -> None:
    assert as_sent(req(self_check=True)).system == SELF_CHECK_INSTRUCTION
    both = instructions(req(response_format="json", self_check=True))
    assert both is not None
    lines = both.split("\n")
    assert lines[0].startswith(JSON_INSTRUCTION) and "self-check line" in lines[0]
    assert lines[-1] == SELF_CHECK_INSTRUCTION
    # the stored request stays the caller's: only the call carries the instructions
    original = req(self_check=True)
    as_sent(original)
    assert original.system is None


# --- the self-check line ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "stored", "passed"), [
    (f"4\n{PASS_LINE}", "4", True),
    (f"4\n{FAIL_LINE}\n\n  ", "4", False),
    ("4\n**self-check: pass**", "4", True),
    ("4\n`SELF-CHECK:FAIL.`", "4", False),
    ("4\nSELF-CHECK: PASS maybe", "4\nSELF-CHECK: PASS maybe", None),
    (f"{PASS_LINE}\n4", f"{PASS_LINE}\n4", None),
    ("4", "4", None),
    ("", "", None),
    (PASS_LINE, "", True),
])
def test_split_self_check(text: str, stored: str, passed: bool | None) -> None:
    assert split_self_check(text) == (stored, passed)


# --- the signals ------------------------------------------------------------------------

def kind(request: JobRequest, stop: str | None, text: str) -> SignalKind | None:
    signal = out_of_depth(request, stop, text, short_budget=SHORT)
    return None if signal is None else signal.kind


def test_a_fine_answer_shows_no_signal() -> None:
    assert kind(req(), "end_turn", "hello") is None
    assert kind(req(json_schema=SCHEMA), "end_turn", '{"n": 1}') is None
    assert kind(req(self_check=True), "end_turn", f"x\n{PASS_LINE}") is None
    assert kind(req(), None, "hello") is None


def test_refusal() -> None:
    assert kind(req(), "refusal", "I can't") is SignalKind.REFUSAL
    # it comes first, whatever else the answer shows
    assert kind(req(json_schema=SCHEMA, self_check=True, max_tokens=10), "refusal",
                "no") is SignalKind.REFUSAL


@pytest.mark.parametrize(("max_tokens", "escalates"), [(1, True), (SHORT, True),
                                                       (SHORT + 1, False), (64_000, False)])
def test_max_tokens_only_on_a_short_budget(max_tokens: int, escalates: bool) -> None:
    signal = out_of_depth(req(max_tokens=max_tokens), "max_tokens", "cut", short_budget=SHORT)
    assert (signal is not None) is escalates
    if signal is not None:
        assert signal.kind is SignalKind.MAX_TOKENS
        assert str(signal) == f"max_tokens (ran out at max_tokens {max_tokens} <= {SHORT})"


def test_a_long_budget_cut_short_is_still_judged_on_its_format() -> None:
    assert kind(req(max_tokens=4000, json_schema=SCHEMA), "max_tokens",
                '{"n": ') is SignalKind.INVALID_JSON


def test_self_check_fail_or_missing() -> None:
    checked = req(self_check=True)
    assert kind(checked, "end_turn", f"x\n{FAIL_LINE}") is SignalKind.SELF_CHECK
    assert kind(checked, "end_turn", "x") is SignalKind.SELF_CHECK
    assert str(out_of_depth(checked, "end_turn", "x", short_budget=SHORT)) == \
        "self_check (no self-check line)"
    assert str(out_of_depth(checked, "end_turn", f"x\n{FAIL_LINE}", short_budget=SHORT)) == \
        "self_check (the self-check failed)"
    # a job that asked for none: such a line means nothing and stays in the text
    assert judge(req(), "end_turn", f"x\n{FAIL_LINE}", short_budget=SHORT).signal is None
    assert judge(req(), "end_turn", f"x\n{FAIL_LINE}", short_budget=SHORT).text == \
        f"x\n{FAIL_LINE}"


def test_invalid_json_and_schema() -> None:
    assert kind(req(response_format="json"), "end_turn", "Sure! {") is SignalKind.INVALID_JSON
    assert kind(req(response_format="json"), "end_turn", "```json\n[1]\n```") is None
    signal = out_of_depth(req(json_schema=SCHEMA), "end_turn", '{"n": "one"}',
                          short_budget=SHORT)
    assert signal == Signal(SignalKind.INVALID_JSON, "$.n: expected integer, got string")


def test_json_is_checked_without_the_self_check_line_and_the_line_is_stripped() -> None:
    answer = judge(req(json_schema=SCHEMA, self_check=True), "end_turn",
                   f'{{"n": 2}}\n{PASS_LINE}', short_budget=SHORT)
    assert answer.signal is None and answer.text == '{"n": 2}'
    # the self-check is judged before the format
    failed = judge(req(json_schema=SCHEMA, self_check=True), "end_turn",
                   f"nope\n{FAIL_LINE}", short_budget=SHORT)
    assert failed.signal is not None and failed.signal.kind is SignalKind.SELF_CHECK
    assert failed.text == "nope"


# --- who escalates, and where ------------------------------------------------------------

@pytest.mark.parametrize(("escalate", "queue", "target"), [
    (None, "haiku-simple", None),  # no opt-in, no queue policy
    (True, "haiku-simple", "sonnet-complex"),  # the first complex queue
    (False, "haiku-simple", None),
    (None, "cascade", "deep"),  # the queue's policy
    (True, "cascade", "deep"),  # the queue's target wins over the first complex queue
    (False, "cascade", None),  # the job opts out of its queue's policy
    (True, "sonnet-complex", None),  # only from a simple queue
    (True, "deep", None),
    (True, "nowhere", None),  # a queue not configured (any more)
])
def test_escalation_target(escalate: bool | None, queue: str, target: str | None) -> None:
    found = escalation_target(req(escalate=escalate), queue, QUEUES)
    assert (None if found is None else found.name) == target


def test_no_complex_queue_no_target() -> None:
    assert escalation_target(req(escalate=True), "haiku-simple", (SIMPLE,)) is None
    odd = QueueSpec(name="loop", model="m", complexity="simple", escalate_to="loop")
    assert escalation_target(req(), "loop", (odd,)) is None


# --- the decision -----------------------------------------------------------------------

SIGNAL = Signal(SignalKind.REFUSAL, "the model refused")


def cap(usd: str, spent: str = "0") -> CapCheck:
    price = default_pricebook().price(COMPLEX.model)
    assert price is not None
    return CapCheck(Decimal(usd), Decimal(spent), worst_case(price, req(max_tokens=1000)))


def test_escalates_with_a_signal_a_target_and_room_under_the_cap() -> None:
    decision = should_escalate(SIGNAL, COMPLEX, escalated_from=None, cap=cap("1"))
    assert decision.action is Action.ESCALATE and decision.target == COMPLEX
    assert decision.note == "; escalated: refusal"
    # a model without a price: the cap cannot be checked, so it does not stop it
    assert should_escalate(SIGNAL, COMPLEX, escalated_from=None,
                           cap=None).action is Action.ESCALATE


@pytest.mark.parametrize(("signal", "target", "escalated_from"), [
    (None, COMPLEX, None),  # a fine answer
    (SIGNAL, None, None),  # not opted in
    (SIGNAL, COMPLEX, "claude-haiku-4-5"),  # at most once
])
def test_keeps_the_answer(signal: Signal | None, target: QueueSpec | None,
                          escalated_from: str | None) -> None:
    decision = should_escalate(signal, target, escalated_from=escalated_from, cap=cap("1"))
    assert decision.action is Action.KEEP and decision.note == ""


def test_the_cost_cap_stops_an_escalation_and_says_why() -> None:
    worst = cap("1").worst.usd
    fits = cap(str(worst + Decimal("0.001")), spent="0.001")
    assert should_escalate(SIGNAL, COMPLEX, escalated_from=None,
                           cap=fits).action is Action.ESCALATE  # exactly at the cap
    over = cap(str(worst + Decimal("0.001")), spent="0.0010001")
    decision = should_escalate(SIGNAL, COMPLEX, escalated_from=None, cap=over)
    assert decision.action is Action.CAPPED and decision.target == COMPLEX
    assert decision.note.startswith("; not escalated (refusal) to sonnet-complex: worst case")
    assert "exceeds the job's cost cap" in decision.note
