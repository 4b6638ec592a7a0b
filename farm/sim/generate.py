"""One answer of the simulated API, shared by ``POST /v1/messages`` and the Message Batches:
what the prompt holds (its markers, input tokens and cache points), then the message (text,
stop reason, usage). Pure and deterministic but for the message id; the prompt cache's
outcome is passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from farm.sim import answers
from farm.sim.content import (
    REQ_OVERHEAD,
    CachePoint,
    cache_points,
    last_user_text,
    make_text,
    plan_output,
    prompt_segments,
    request_digest,
)
from farm.sim.wire import parse_markers


@dataclass(frozen=True)
class Prompt:
    """What the simulator reads from a valid Messages body before answering it."""

    model: str
    text: str  # the last user message
    marks: dict[str, float]
    total_in: int  # every input token, cached or not
    points: list[CachePoint]  # the cacheable prefixes (none below the model's minimum)


def read_prompt(body: dict[str, Any]) -> Prompt:
    segs = prompt_segments(body)
    text = last_user_text(body["messages"])
    points = cache_points(body["model"], segs) if any(seg[1] for seg in segs) else []
    return Prompt(body["model"], text, parse_markers(text),
                  REQ_OVERHEAD + sum(seg[0] for seg in segs), points)


def compose(body: dict[str, Any], prompt: Prompt, cached: tuple[int, int, int], seed: int,
            weak_models: Sequence[str]) -> dict[str, Any]:
    """The message answering ``body``; ``cached``: the (read, 5m write, 1h write) tokens."""
    model, max_tokens, marks = prompt.model, body["max_tokens"], prompt.marks
    read, write_5m, write_1h = cached
    digest, refusal = request_digest(seed, body), "refusal" in marks
    out, stop = (min(8, max_tokens), "refusal") if refusal else plan_output(
        prompt.text, digest, max_tokens, int(marks["tokens"]) if "tokens" in marks else None)
    shaped = None if refusal else answers.shape(model, body.get("system"), prompt.text,
                                                 max_tokens, digest, (out, stop), weak_models)
    if shaped is not None:
        out, stop = shaped.output_tokens, shaped.stop_reason
        refusal = stop == "refusal"
    text = shaped.text if shaped is not None else (
        answers.REFUSAL_TEXT if refusal else make_text(digest, out))
    usage = {"input_tokens": prompt.total_in - read - write_5m - write_1h,
             "cache_creation_input_tokens": write_5m + write_1h, "cache_read_input_tokens": read,
             "cache_creation": {"ephemeral_5m_input_tokens": write_5m,
                                "ephemeral_1h_input_tokens": write_1h},
             "output_tokens": out, "service_tier": "standard"}
    message: dict[str, Any] = {
        "id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": text}], "stop_reason": stop,
        "stop_sequence": None, "usage": usage}
    if refusal:
        message["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
    return message
