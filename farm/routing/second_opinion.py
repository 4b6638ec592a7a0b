"""The second opinion on a job the router was unsure of. Pure: no I/O.

A job whose classifier score fell in the uncertain band (FARM_ROUTER_SECOND_OPINION) is
routed to the simple queue marked ``second_opinion``. Its worker first asks the simple
model itself, with a fixed rubric (``opinion_request``: the job's prompt, truncated to
``PROMPT_CHARS``, ``max_tokens`` ``MAX_TOKENS``), whether the job needs the big model.
The call goes through admission and is recorded as its own attempt (outcome
"second_opinion", with its tokens and cost). ``decide``: "complex" moves the job to the
first complex queue; "simple" or an answer that cannot be read keeps it on the simple
model. Either way it happens once per job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from farm.jobs import Complexity, JobRequest
from farm.settings import QueueSpec

TAG = "[farm:second-opinion]"  # the rubric call's system prompt starts with it
PROMPT_CHARS = 6000
MAX_TOKENS = 32
RUBRIC = f"""{TAG} You route jobs between a small fast model and a large model. Read the \
job below and decide whether it needs the large model.
Complex (large model): multi-step reasoning or maths; diagnosing bugs or failures; design \
with trade-offs; substantial code; analysis that must reach a decision; planning with \
dependencies; long or demanding writing.
Simple (small model): extraction; classification; short translation; formatting; short \
facts; short summaries; small standard code; rewriting.
Do not do the job. Reply with only {{"complexity":"simple"}} or {{"complexity":"complex"}}."""
_WORD = re.compile(r"\b(simple|complex)\b", re.IGNORECASE)
_KEYED = re.compile(r"complexity[\"']?\s*[:=]\s*[\"']?(simple|complex)", re.IGNORECASE)


def opinion_request(request: JobRequest) -> JobRequest:
    """The rubric call for ``request``: the same tenant, priority and cost cap."""
    prompt = request.prompt
    if len(prompt) > PROMPT_CHARS:
        prompt = prompt[:PROMPT_CHARS] + f"\n[… {len(request.prompt) - PROMPT_CHARS:,} more " \
                                          "characters not shown]"
    return JobRequest(
        prompt=f"The job (it may ask for up to {request.max_tokens:,} output tokens):\n"
               f"<job>\n{prompt}\n</job>",
        system=RUBRIC, max_tokens=MAX_TOKENS, priority=request.priority,
        tenant=request.tenant, max_cost_usd=request.max_cost_usd)


def parse_opinion(text: str) -> Complexity | None:
    """"simple" or "complex" from the model's answer: JSON {"complexity": …} (in a fence or
    amid other text too), else "complexity: …", else the one word if only one of the two
    appears; None when it says neither (or both)."""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            value = json.loads(text[start:end + 1])
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(said := value.get("complexity"), str):
            word = said.strip().lower()
            if word in ("simple", "complex"):
                return Complexity(word)
    if keyed := _KEYED.search(text):
        return Complexity(keyed.group(1).lower())
    words = {w.lower() for w in _WORD.findall(text)}
    return Complexity(words.pop()) if len(words) == 1 else None


@dataclass(frozen=True)
class Opinion:
    """What the worker does after the rubric call."""

    target: QueueSpec | None  # the queue the job moves to; None: it stays
    note: str  # appended to the job's route_reason


def decide(said: Complexity | None, queues: Sequence[QueueSpec]) -> Opinion:
    """Move to the first complex queue on "complex"; otherwise stay on the simple model."""
    if said is Complexity.COMPLEX:
        target = next((q for q in queues if q.complexity == "complex"), None)
        if target is not None:
            return Opinion(target, "; second opinion: complex")
        return Opinion(None, "; second opinion: complex, but no complex queue is configured")
    if said is Complexity.SIMPLE:
        return Opinion(None, "; second opinion: simple")
    return Opinion(None, "; second opinion: unclear, kept simple")
