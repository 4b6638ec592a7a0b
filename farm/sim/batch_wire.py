"""The Message Batches API's rules and wire format, pure: what a create request may hold, the
``message_batch`` object, list pagination, when each request of a batch is due, the order of
the results. ``farm.sim.batches`` serves them.

A batch holds 1..100,000 requests (a body of at most 256 MB), each ``{"custom_id",
"params"}``: custom_id matches ``^[a-zA-Z0-9_-]{1,64}$`` and is unique in the batch, params
is an object without ``stream: true``. As with the real API, the params themselves are
validated while the batch is processed: a bad one ends "errored" (invalid_request_error).
Request i of n is processed at created_at + processing_s * (i + 1) / n; the counts stay
"processing" until the whole batch ends (as the API reports them); what a cancel or the
24-hour expiry finds unprocessed ends "canceled" or "expired".
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
import string
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024
EXPIRY_S = 24 * 3600.0
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ID_CHARS = string.ascii_letters + string.digits


@dataclass(eq=False)
class Batch:
    """One batch's state; ``results[i]`` is request i's result once it is processed."""

    id: str
    custom_ids: list[str]
    params: list[Any]  # dropped once the batch ends
    created_at: float
    processing_s: float
    results: list[dict[str, Any]] = field(default_factory=list)
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def size(self) -> int:
        return len(self.custom_ids)

    @property
    def expires_at(self) -> float:
        return self.created_at + EXPIRY_S

    @property
    def status(self) -> str:
        return ("ended" if self.ended_at is not None
                else "canceling" if self.cancel_initiated_at is not None else "in_progress")

    def request_counts(self) -> dict[str, int]:
        """Every request "processing" until the batch ends, then counted by result type."""
        if self.ended_at is None:
            return {"processing": self.size, **dict.fromkeys(RESULT_TYPES, 0)}
        found = Counter(result["type"] for result in self.results)
        return {"processing": 0, **{kind: found[kind] for kind in RESULT_TYPES}}


def new_batch_id() -> str:
    return "msgbatch_01" + "".join(secrets.choice(_ID_CHARS) for _ in range(22))


def validate_batch(body: Any) -> str | None:
    """The first problem of a create request's body (a 400), else None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if "requests" not in body:
        return "requests: Field required"
    requests = body["requests"]
    if not isinstance(requests, list):
        return "requests: Input should be a valid list"
    if not 1 <= len(requests) <= MAX_REQUESTS:
        return ("requests: List should have at least 1 item after validation, not 0"
                if not requests else f"requests: List should have at most {MAX_REQUESTS} items "
                f"after validation, not {len(requests)}")
    seen: dict[str, int] = {}
    for i, item in enumerate(requests):
        where = f"requests.{i}"
        if not isinstance(item, dict):
            return f"{where}: Input should be a valid dictionary"
        if missing := next((k for k in ("custom_id", "params") if k not in item), None):
            return f"{where}.{missing}: Field required"
        custom_id, params = item["custom_id"], item["params"]
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            return (f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' "
                    f"(got {custom_id!r})")
        if custom_id in seen:
            return (f"{where}.custom_id: duplicate custom_id {custom_id!r} (also requests."
                    f"{seen[custom_id]}); each custom_id must be unique within a batch")
        seen[custom_id] = i
        if not isinstance(params, dict):
            return f"{where}.params: Input should be a valid dictionary"
        if params.get("stream", False) is not False:
            return f"{where}.params.stream: streaming is not supported in a message batch"
    return None


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def batch_object(batch: Batch, origin: str) -> dict[str, Any]:
    """The ``message_batch`` object; results_url (on ``origin``, the server as the client
    reached it) once the batch has ended."""
    ended = batch.ended_at is not None
    return {"id": batch.id, "type": "message_batch", "processing_status": batch.status,
            "request_counts": batch.request_counts(), "ended_at": rfc3339(batch.ended_at),
            "created_at": rfc3339(batch.created_at), "expires_at": rfc3339(batch.expires_at),
            "cancel_initiated_at": rfc3339(batch.cancel_initiated_at), "archived_at": None,
            "results_url": f"{origin}/v1/messages/batches/{batch.id}/results" if ended else None}


def list_query(query: Any) -> tuple[int, str | None, str | None]:
    """(limit, after_id, before_id) of the list route's query; ValueError names the field."""
    raw = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise ValueError(f"limit: Input should be a valid integer (got {raw!r})") from None
    if not 1 <= limit <= MAX_LIMIT:
        bound = "greater than or equal to 1" if limit < 1 else f"less than or equal to {MAX_LIMIT}"
        raise ValueError(f"limit: Input should be {bound}")
    after, before = query.get("after_id"), query.get("before_id")
    if after and before:
        raise ValueError("after_id, before_id: give at most one of them")
    return limit, after or None, before or None


def page(ids: list[str], limit: int, after_id: str | None = None, before_id: str | None = None
         ) -> tuple[list[str], bool]:
    """(the page of ``ids`` (newest first), has_more): the ``limit`` after ``after_id``, or
    the ``limit`` just before ``before_id``; ValueError when the cursor is unknown."""
    cursor = after_id or before_id
    if cursor is not None and cursor not in ids:
        raise ValueError(f"{'after_id' if after_id else 'before_id'}: no message batch {cursor}")
    if before_id is not None:
        end = ids.index(before_id)
        start = max(0, end - limit)
        return ids[start:end], start > 0
    start = 0 if after_id is None else ids.index(after_id) + 1
    return ids[start:start + limit], len(ids) > start + limit


def due_count(size: int, created_at: float, processing_s: float, now: float) -> int:
    """How many of the batch's requests are due by ``now`` (request i at created_at +
    processing_s * (i + 1) / size)."""
    if processing_s <= 0:
        return size
    # a microsecond's grace: float epoch seconds must not leave a request due just after
    return max(0, min(size, int((now - created_at + 1e-6) * size / processing_s)))


def next_due(size: int, created_at: float, processing_s: float, done: int) -> float:
    """When request ``done`` (0-based) is due."""
    return created_at + processing_s * (done + 1) / size


def result_order(seed: int, custom_ids: list[str]) -> list[int]:
    """The order the results are served in: shuffled (the API promises no order), the same
    for the same seed and custom_ids."""
    digest = hashlib.blake2b("\n".join(custom_ids).encode(), digest_size=8).hexdigest()
    order = list(range(len(custom_ids)))
    random.Random(f"{seed}:{digest}").shuffle(order)
    return order
