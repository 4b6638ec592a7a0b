"""Escalation, a FrugalGPT-style cascade: a job the simple model answered runs again on
the complex model when the answer shows the simple one was out of its depth. Pure: no
I/O; the worker (farm.worker.reroute) calls it and moves the job.

What the farm asks for (``as_sent``): a job with ``response_format="json"`` or a
``json_schema`` gets ``JSON_INSTRUCTION`` (and the schema, on one line after
``SCHEMA_LEAD``) appended to its system prompt; one with ``self_check`` gets
``SELF_CHECK_INSTRUCTION``. The stored request is the caller's; only the call carries them.

The signals (``judge``), checked in this order on the answer:

- ``refusal``: stop_reason "refusal";
- ``max_tokens``: stop_reason "max_tokens" on a short budget (the job's max_tokens at most
  FARM_ESCALATE_SHORT_BUDGET: the job expected a short answer and the model ran out);
- ``self_check``: the job asked for a self-check and the answer's last line is
  "SELF-CHECK: FAIL", or no such line ends it (``split_self_check``: the line is stripped
  from the stored text either way it reads; case and surrounding ``*``/backticks are
  tolerated);
- ``invalid_json``: the job asked for JSON and the answer (self-check line removed, one
  enclosing ```json fence allowed) is not JSON, or not valid against its schema
  (farm.routing.json_subset).

Who escalates (``escalation_target``): only a job on a simple queue; ``escalate=False``
never; ``escalate=None`` when its queue has ``escalate_to``; ``escalate=True`` to its
queue's ``escalate_to``, else the first configured complex queue. ``should_escalate``:
at most once per job, and not when the complex model's worst case on top of what the
job has spent would cross the job's cost cap (the simple answer is kept, and the reason
noted on the job's route_reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from farm.costs.estimate import CapCheck
from farm.jobs import JobRequest
from farm.routing.json_subset import json_problem
from farm.settings import QueueSpec

JSON_INSTRUCTION = ("[farm:json] Reply with a single JSON value and nothing else: no prose "
                    "before or after it, no code fence.")
SCHEMA_LEAD = "The JSON value must validate against this JSON Schema: "
SELF_CHECK_INSTRUCTION = (
    "[farm:self-check] Before you finish, check your answer against the task. Then end "
    'your reply with one final line that is exactly "SELF-CHECK: PASS" if the answer is '
    'correct and complete, or exactly "SELF-CHECK: FAIL" if it is not.')
JSON_THEN_CHECK = " The self-check line goes on its own line after the JSON value."
PASS_LINE, FAIL_LINE = "SELF-CHECK: PASS", "SELF-CHECK: FAIL"
_CHECK_LINE = re.compile(r"^[\s*_`]*SELF-CHECK:\s*(PASS|FAIL)[\s*_`.]*$", re.IGNORECASE)


class SignalKind(StrEnum):
    REFUSAL = "refusal"
    MAX_TOKENS = "max_tokens"
    SELF_CHECK = "self_check"
    INVALID_JSON = "invalid_json"


@dataclass(frozen=True)
class Signal:
    """Why an answer shows the model was out of its depth: the kind and a short detail
    (figures and paths only, never the answer's text)."""

    kind: SignalKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.value} ({self.detail})"


@dataclass(frozen=True)
class Answer:
    text: str  # what the job stores: the self-check line removed
    signal: Signal | None


def instructions(request: JobRequest) -> str | None:
    """What the farm appends to the job's system prompt for its call, if anything."""
    parts: list[str] = []
    if request.wants_json:
        parts.append(JSON_INSTRUCTION + (JSON_THEN_CHECK if request.self_check else ""))
        if request.json_schema is not None:
            parts.append(SCHEMA_LEAD + json.dumps(request.json_schema, separators=(",", ":"),
                                                  sort_keys=True))
    if request.self_check:
        parts.append(SELF_CHECK_INSTRUCTION)
    return "\n".join(parts) if parts else None


def as_sent(request: JobRequest) -> JobRequest:
    """The request as the provider gets it: the farm's instructions after its system
    prompt (the same request when there are none)."""
    extra = instructions(request)
    if extra is None:
        return request
    system = f"{request.system}\n\n{extra}" if request.system else extra
    return request.model_copy(update={"system": system})


def split_self_check(text: str) -> tuple[str, bool | None]:
    """(the text without its final self-check line, True for PASS / False for FAIL); None
    and the text unchanged when its last non-blank line is no self-check line."""
    lines = text.rstrip().split("\n")
    found = _CHECK_LINE.match(lines[-1]) if lines else None
    if found is None:
        return text, None
    return "\n".join(lines[:-1]).rstrip(), found.group(1).upper() == "PASS"


def judge(request: JobRequest, stop_reason: str | None, text: str, *,
          short_budget: int) -> Answer:
    """The answer to store and the first signal it shows (None: a fine answer)."""
    stored, passed = split_self_check(text) if request.self_check else (text, None)
    if stop_reason == "refusal":
        return Answer(stored, Signal(SignalKind.REFUSAL, "the model refused"))
    if stop_reason == "max_tokens" and request.max_tokens <= short_budget:
        return Answer(stored, Signal(SignalKind.MAX_TOKENS, f"ran out at max_tokens "
                                     f"{request.max_tokens} <= {short_budget}"))
    if request.self_check and passed is not True:
        why = "the self-check failed" if passed is False else "no self-check line"
        return Answer(stored, Signal(SignalKind.SELF_CHECK, why))
    if request.wants_json and (problem := json_problem(stored, request.json_schema)):
        return Answer(stored, Signal(SignalKind.INVALID_JSON, problem))
    return Answer(stored, None)


def out_of_depth(request: JobRequest, stop_reason: str | None, text: str, *,
                 short_budget: int) -> Signal | None:
    """The signal an answer shows, if any (``judge`` without the stored text)."""
    return judge(request, stop_reason, text, short_budget=short_budget).signal


def escalation_target(request: JobRequest, queue: str, queues: Sequence[QueueSpec]
                      ) -> QueueSpec | None:
    """Where a job of ``queue`` escalates to, None when it does not (see the module)."""
    spec = next((q for q in queues if q.name == queue), None)
    if spec is None or spec.complexity != "simple" or request.escalate is False:
        return None
    if spec.escalate_to is not None:
        target = next((q for q in queues if q.name == spec.escalate_to), None)
    elif request.escalate:
        target = next((q for q in queues if q.complexity == "complex"), None)
    else:
        target = None
    return None if target is None or target.name == spec.name else target


class Action(StrEnum):
    KEEP = "keep"  # the answer stands (fine, not opted in, or escalated once already)
    ESCALATE = "escalate"  # run the job again on the target queue's model
    CAPPED = "capped"  # it would escalate, but the complex call could cross the cost cap


@dataclass(frozen=True)
class Decision:
    action: Action
    target: QueueSpec | None = None
    note: str = ""  # what the job's route_reason gets appended ("; escalated: refusal")


def should_escalate(signal: Signal | None, target: QueueSpec | None, *,
                    escalated_from: str | None, cap: CapCheck | None) -> Decision:
    """Whether to escalate: a signal, a target, not escalated before, and (``cap``: the
    complex call's worst case on top of what the job has spent, against the job's cap;
    None when its cost cannot be known) within the job's cost cap."""
    if signal is None or target is None or escalated_from is not None:
        return Decision(Action.KEEP)
    if cap is not None and not cap.fits:
        return Decision(Action.CAPPED, target, f"; not escalated ({signal.kind.value}) to "
                        f"{target.name}: {cap.explain()}")
    return Decision(Action.ESCALATE, target, f"; escalated: {signal.kind.value}")
