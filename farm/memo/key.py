"""The memo key: a hash of exactly the body the provider gets (farm.provider.body.wire_body
of the request as sent, the farm's instructions in its system prompt), so that two jobs
share a key only when the provider would see the same call.

Canonical: the body as JSON with keys sorted, no whitespace between tokens, numbers by
their value (1 and 1.0 are one number; -0.0 is 0), tuples as lists, text as it is (its
whitespace and case are the prompt's). Nothing is picked out of the body, so nothing that
reaches the provider can be left out of the key (the bug of caches that hash a list of
chosen fields: a parameter added later is missed).

Every field of a JobRequest is accounted for here: it reaches the body (``IN_BODY``), it
decides the model the job runs on, which is in the body (``VIA_MODEL``), or it is left out
for a stated reason (``NOT_IN_KEY``); the unit tests check that the three cover every field
and that each field of ``IN_BODY`` changes the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

VERSION = b"farm-memo-v1\n"  # bump when the canonical form changes: old keys then miss

IN_BODY = frozenset({
    "prompt", "system", "documents", "max_tokens", "tools", "tool_choice", "temperature",
    "top_p", "top_k", "stop_sequences",
    # the farm's instructions in the system prompt (farm.routing.escalation.as_sent)
    "response_format", "json_schema", "self_check",
})

VIA_MODEL = {
    "model": "the router's choice of model (the body's model)",
    "complexity": "routes the job to a queue, hence a model (the body's model)",
    "queue": "routes the job to a queue, hence a model (the body's model)",
}

NOT_IN_KEY = {
    "tenant": "a scope, not a part: lookups are per tenant (farm.memo.store)",
    "priority": "when the job runs, not what it is asked",
    "metadata": "the caller's labels; never sent to the provider",
    "idempotency_key": "names a submit; the answer does not depend on it",
    "memo": "whether the job memoizes, not what it asks",
    "memo_ttl_s": "how old a reused answer may be, not what is asked",
    "batch": "how the call is sent (a Message Batch at half price), not what it asks",
    "deadline": "when the answer is needed, not what it is",
    "cache": "prompt caching's cache_control changes the price, never the answer",
    "escalate": "an answer it could change (out of its depth on a simple queue) is never "
                "reused (farm.memo.policy.reusable)",
    "max_cost_usd": "whether a call may go out; an answer kept because the cap stopped its "
                    "escalation is never reused (farm.memo.policy.reusable)",
    "allow_fallback": "an answer of the fallback model is never reused "
                      "(farm.memo.policy.reusable)",
}


def canonical(value: Any) -> Any:
    """``value`` with one JSON text: integral floats as ints, tuples as lists, mapping keys
    as strings (json sorts them). A float that is not finite is refused: no JSON has it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"the memo key cannot hold the number {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"the memo key cannot hold a {type(value).__name__}")


def canonical_json(body: Mapping[str, Any]) -> str:
    """The body's canonical JSON text (see the module)."""
    return json.dumps(canonical(body), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def memo_key_of(body: Mapping[str, Any]) -> str:
    """sha256 (hex, 64 characters) of the body's canonical JSON: the memo key."""
    return hashlib.sha256(VERSION + canonical_json(body).encode("utf-8")).hexdigest()
