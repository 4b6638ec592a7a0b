"""Domain values of a job: what a caller submits and what the farm records.

Everything here is frozen and typed; validation errors name the offending field.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from farm.routing.json_subset import schema_problem

MAX_PROMPT_CHARS = 800_000  # ~200k tokens at ~4 chars/token: the context window
MAX_OUTPUT_TOKENS = 64_000
CONTEXT_WINDOW_TOKENS = 200_000  # every model the farm routes to has at least this window


class FieldError(ValueError):
    """A job's field is unacceptable: ``field`` names it, ``problem`` says what is wrong
    without naming it again (str() is "field: problem")."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


class Complexity(StrEnum):
    AUTO = "auto"
    SIMPLE = "simple"
    COMPLEX = "complex"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"  # the Celery/Redis priority of each: farm.broker.layout.celery_priority


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED}
)


def holds_nul(value: Any) -> bool:
    """Whether a string, or any key or value inside mappings and sequences, holds NUL
    (U+0000): Postgres cannot store it in text or jsonb, so a job holding one is refused."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(holds_nul(item) for item in value)
    return False


Tenant = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class JobRequest(BaseModel):
    """One job as a caller submits it (Python API, `farm submit`, JSONL, send_task)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    complexity: Complexity = Complexity.AUTO
    model: str | None = Field(default=None, min_length=1, max_length=128)
    queue: str | None = Field(default=None, min_length=1, max_length=64)
    max_tokens: int = Field(default=1024, ge=1, le=MAX_OUTPUT_TOKENS)
    priority: Priority = Priority.NORMAL
    tenant: Tenant = "default"
    tools: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)
    # while the model's circuit breaker is open, run on the queue's fallback model instead
    # of waiting (jobs.served_model records which model answered)
    allow_fallback: bool = False
    # the most this job may cost over all its calls (USD); None: its tenant's, its queue's,
    # else the farm's default (FARM_MAX_COST_USD, $2.00): farm.costs.estimate.cost_cap
    max_cost_usd: Decimal | None = Field(default=None, gt=0, le=10_000, max_digits=12,
                                         decimal_places=6)
    # the answer must be JSON (json_schema implies it): the farm asks for it and checks it
    # (farm.routing.json_subset: a documented subset of JSON Schema)
    response_format: Literal["json"] | None = None
    json_schema: dict[str, Any] | None = None
    # the model is asked to verify its answer and end with "SELF-CHECK: PASS" or "FAIL"
    self_check: bool = False
    # escalation to the complex model when the simple one was out of its depth
    # (farm.routing.escalation): True asks for it, False opts out, None: the queue's policy
    escalate: bool | None = None
    # sampling and tool use, sent as given (None / empty: the API's default); all of them are
    # part of the memo key (farm.memo.key)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    stop_sequences: tuple[str, ...] = Field(default=(), max_length=64)
    tool_choice: dict[str, Any] | None = None
    # long stable texts the prompt refers to, sent before it as their own content blocks, so
    # that prompt caching can keep them (farm.costs.caching)
    documents: tuple[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)], ...] = Field(
        default=(), max_length=16)
    # prompt caching of the stable prefix (tools, system, documents): "5m" or "1h" TTL, "off";
    # None: FARM_PROMPT_CACHE
    cache: Literal["off", "5m", "1h"] | None = None
    # result memoization (farm.memo): True reuses an identical earlier answer, False never;
    # None: the tenant's or the queue's policy. memo_ttl_s: how old that answer may be
    memo: bool | None = None
    memo_ttl_s: int | None = Field(default=None, ge=1, le=90 * 86_400)
    # Message Batches at half price (farm.batches): True waits for a batch, False never;
    # None: the queue's policy, or a deadline far enough away (FARM_BATCH_DEADLINE_S)
    batch: bool | None = None
    deadline: datetime | None = None
    # the same key (per tenant) from any client gives the same job, never a second one
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200,
                                        pattern=r"^[\x21-\x7e]+$")

    @field_validator("deadline")
    @classmethod
    def _deadline_aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs a time zone (e.g. 2026-12-01T12:00:00Z)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is blank (whitespace only)")
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_in_subset(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := schema_problem(value)):
            raise ValueError(problem)
        return value

    @property
    def wants_json(self) -> bool:
        return self.response_format == "json" or self.json_schema is not None

    @field_validator("prompt", "system", "model", "queue", "tools", "metadata", "json_schema",
                     "stop_sequences", "tool_choice", "documents")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        if holds_nul(value):  # the value itself is never repeated in the error
            raise ValueError(f"{info.field_name} holds a NUL character (\\x00), which "
                             "Postgres cannot store")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 keys")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 1024:
                raise ValueError(f"entry {key[:64]!r} is too long (keys up to 64 characters, "
                                 "values up to 1024)")
        return value

    def messages(self) -> list[dict[str, Any]]:
        """The user turn: the prompt, after the documents (each its own text block)."""
        if not self.documents:
            return [{"role": "user", "content": self.prompt}]
        blocks = [{"type": "text", "text": text} for text in (*self.documents, self.prompt)]
        return [{"role": "user", "content": blocks}]

    def approx_input_tokens(self) -> int:
        """A cheap estimate (4 chars/token, rounded up), no I/O."""
        chars = len(self.prompt) + len(self.system or "") + sum(map(len, self.documents))
        return max(1, -(-chars // 4))

    def check_fits_context(self, window: int = CONTEXT_WINDOW_TOKENS) -> None:
        """Raise FieldError (prompt) when prompt + system + max_tokens cannot fit the context
        window."""
        need = self.approx_input_tokens() + self.max_tokens
        if need > window:
            raise FieldError(
                "prompt", f"about {self.approx_input_tokens()} input tokens + max_tokens "
                f"{self.max_tokens} exceed the model's {window}-token context window"
            )


def problems(exc: ValueError) -> list[tuple[str, str]]:
    """(field, problem) for each problem of an invalid job, the problem not naming the field
    again: pydantic's errors by location and message (a validator's own message without
    pydantic's "Value error, "; never pydantic's own text, which repeats the input: the
    prompt), a FieldError's, or a "field: problem" text."""
    if isinstance(exc, ValidationError):
        out: list[tuple[str, str]] = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "job"
            cause = err.get("ctx", {}).get("error") if err["type"] == "value_error" else None
            out.append((field, str(cause) if cause else err["msg"]))
        return out
    if isinstance(exc, FieldError):
        return [(exc.field, exc.problem)]
    field, colon, rest = str(exc).partition(": ")
    return [(field, rest)] if colon and " " not in field else [("job", str(exc))]


def describe_problems(exc: ValueError) -> str:
    """The problems of an invalid job on one line, each naming its field."""
    return "; ".join(f"{field}: {problem}" for field, problem in problems(exc))


class Route(BaseModel):
    """Where the router sends a job: the queue, the model, and why."""

    model_config = ConfigDict(frozen=True)

    queue: str
    model: str
    complexity: Complexity
    reason: str
    # the learned classifier's score (farm.routing.learned), None when it was not asked
    score: float | None = None
    # the score fell in the uncertain band: the simple model's worker asks it first
    # (farm.routing.second_opinion) and moves the job to the complex queue if it says so
    second_opinion: bool = False


class Usage(BaseModel):
    """Token usage exactly as the Messages API reports it."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # breakdown of cache writes by TTL; None when the API did not send one
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None


def new_job_id() -> uuid.UUID:
    return uuid.uuid4()
