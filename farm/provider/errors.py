"""What went wrong with a provider call, independent of the SDK's classes."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong with a provider call, independent of the SDK's classes."""

    RATE_LIMITED = "rate_limited"  # 429
    SPEND_LIMIT = "spend_limit"  # 429 enforced_spend_limit_reached: retrying cannot help
    OVERLOADED = "overloaded"  # 529
    SERVER = "server_error"  # 500-599
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    ABANDONED = "abandoned"  # the worker stopped the call: it could not renew the job's lease
    BAD_REQUEST = "bad_request"  # 400
    AUTH = "authentication"  # 401
    PERMISSION = "permission"  # 403
    NOT_FOUND = "not_found"  # 404
    TOO_LARGE = "request_too_large"  # 413
    VALIDATION = "validation"  # the job itself is invalid
    REFUSAL = "refusal"  # stop_reason == refusal
    EXPIRED = "expired"  # a Message Batch request the API did not process within 24 h
    CANCELED = "canceled"  # a Message Batch request canceled before it was processed
    UNKNOWN = "unknown"


def kind_for_status(status: int, error_type: str = "", message: str = "") -> ErrorKind:
    """Map an HTTP status (and the API's error type/message) to an ErrorKind."""
    if status == 429:
        text = f"{error_type} {message}".lower()
        if "spend_limit" in text or "spend limit" in text:
            return ErrorKind.SPEND_LIMIT
        return ErrorKind.RATE_LIMITED
    if status == 529:
        return ErrorKind.OVERLOADED
    if status in (408,):
        return ErrorKind.TIMEOUT
    if status >= 500:
        return ErrorKind.SERVER
    return {
        400: ErrorKind.BAD_REQUEST,
        401: ErrorKind.AUTH,
        403: ErrorKind.PERMISSION,
        404: ErrorKind.NOT_FOUND,
        413: ErrorKind.TOO_LARGE,
        422: ErrorKind.BAD_REQUEST,
    }.get(status, ErrorKind.UNKNOWN)


class ProviderError(Exception):
    """A failed provider call, classified. The message never contains the API key."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
        latency_s: float = 0.0,
        ratelimit: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.ratelimit = ratelimit or {}
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.latency_s = latency_s


class MissingApiKey(RuntimeError):
    pass
