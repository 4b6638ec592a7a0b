"""Idempotent submit (pure): a job's ``idempotency_key`` names one job of its tenant, from
any client (the Python API, `farm submit`, a plain ``send_task``).

The store's unique index (tenant, idempotency_key) decides who holds a key, never a read
before the write (farm.store.keyed). What a later submit under a held key gets is decided
here, as Stripe does: the same request (its hash: ``request_hash``) gets the holder's job
id; a different request is refused (``IdempotencyConflictError``), never a second job.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from farm.jobs import JobRequest

KEY_FIELD = "idempotency_key"


class IdempotencyConflictError(ValueError):
    """A key already held by a job submitted with a different request: the new request is
    refused, no job is made for it. ``key``, ``tenant`` and ``holder`` (the job holding it)
    say which."""

    def __init__(self, key: str, tenant: str, holder: uuid.UUID) -> None:
        self.key, self.tenant, self.holder = key, tenant, holder
        super().__init__(f"idempotency_key {key!r} (tenant {tenant!r}) is held by job {holder}, "
                         "submitted with a different request: this one is refused (a key "
                         "comes with the same request every time; a new job needs a new key)")


@dataclass(frozen=True)
class Holder:
    """The job holding a key, as stored: its id and its request's hash."""

    id: uuid.UUID
    request_hash: str | None


def _plain(value: Any) -> Any:
    """A request's value in a form with one JSON text: mappings (keys sorted when dumped),
    lists, numbers as their value (a Decimal without trailing zeros), times in UTC."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def canonical_json(request: JobRequest) -> str:
    """The request without its key as one canonical JSON text: fields at their default left
    out (given or not, the same), keys sorted, no whitespace between tokens."""
    fields = request.model_dump(mode="python", exclude_defaults=True, exclude={KEY_FIELD})
    return json.dumps(_plain(fields), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def request_hash(request: JobRequest) -> str:
    """sha256 (hex, 64 characters) of the request's canonical JSON, its key left out."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def keyed_hash(request: JobRequest) -> str | None:
    """The hash stored with a keyed job; None for a job without a key."""
    return None if request.idempotency_key is None else request_hash(request)


def resolve(key: str, tenant: str, wanted_hash: str, holder: Holder) -> uuid.UUID:
    """A request (its hash: ``wanted_hash``) under a key the tenant's ``holder`` holds: the
    holder's job id when it is the same request, else IdempotencyConflictError naming the
    key and the holder. Never a second job."""
    if holder.request_hash != wanted_hash:
        raise IdempotencyConflictError(key, tenant, holder.id)
    return holder.id


def first_of_key(requests: Sequence[JobRequest]) -> list[int]:
    """For each request of one batch, the index of the first request with its key (and
    tenant): itself when it has no key or is the first. The later ones are the same job."""
    first: dict[tuple[str, str], int] = {}
    out = []
    for index, request in enumerate(requests):
        key = request.idempotency_key
        out.append(index if key is None else first.setdefault((request.tenant, key), index))
    return out


def batch_conflicts(requests: Sequence[JobRequest]) -> list[tuple[int, str, str]]:
    """(index, field, problem) of each request of one batch that repeats an earlier one's
    key (and tenant) with a different request: the batch is refused before anything is
    written."""
    problems = []
    for index, first in enumerate(first_of_key(requests)):
        if first != index and request_hash(requests[index]) != request_hash(requests[first]):
            problems.append((index, KEY_FIELD, f"{requests[index].idempotency_key!r} is "
                             "the key of an earlier job of this batch, with a different "
                             "request"))
    return problems
