"""The provider call: one Messages API request through the official SDK.

A worker process builds its clients once (each holds an HTTP connection pool); a group of
threads shares one (farm.provider.clients). The SDK's own retries are off: the farm's retry
policy owns retrying.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import anthropic
from pydantic import BaseModel, ConfigDict

from farm.costs.caching import CacheSetting
from farm.costs.prompt_cache import with_breakpoints
from farm.jobs import JobRequest, Usage
from farm.provider.abort import Calls, tracked_transport
from farm.provider.body import wire_body
from farm.provider.errors import ErrorKind, MissingApiKey, ProviderError, kind_for_status
from farm.settings import Settings


class CallResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    stop_reason: str | None
    usage: Usage
    model: str  # the model that actually served the call
    request_id: str | None
    latency_s: float
    ratelimit: dict[str, str] = {}  # the anthropic-ratelimit-* headers, for the limiter


def tls_context() -> ssl.SSLContext:
    """The TLS settings an SDK client verifies the provider with (httpx's default: certifi's
    CAs, or SSL_CERT_FILE / SSL_CERT_DIR). Built once per process and given to each of its
    clients: every context loads the CA bundle, 0.77 MB apiece, and a worker has one client
    per 10 threads (farm.provider.clients)."""
    import httpx2

    return httpx2.create_ssl_context()


def make_client(settings: Settings, calls: Calls | None = None,
                connections: int | None = None,
                tls: ssl.SSLContext | None = None) -> anthropic.Anthropic:
    """An SDK client whose pool keeps ``connections`` (default: one per worker thread, at
    least 100) alive; with ``calls``, each call can be abandoned from another thread
    (``farm.provider.abort``); ``tls``: a context shared with other clients (default: its
    own)."""
    if settings.anthropic_api_key is None:
        raise MissingApiKey(
            "ANTHROPIC_API_KEY is not set: a worker needs it to call the Claude API "
            "(for the local simulator any non-empty value works, e.g. ANTHROPIC_API_KEY=sim)"
        )
    import httpx2

    limit = connections or max(100, settings.worker_concurrency)
    limits = httpx2.Limits(max_connections=limit, max_keepalive_connections=limit)
    verify: ssl.SSLContext | bool = True if tls is None else tls
    http_client = httpx2.Client(
        limits=limits, verify=verify,
        timeout=httpx2.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        transport=None if calls is None else tracked_transport(calls, limits=limits,
                                                               verify=verify),
    )
    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        max_retries=0,
        timeout=anthropic.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        http_client=http_client,
    )


def _usage(raw: dict[str, Any]) -> Usage:
    found = raw.get("cache_creation")
    has_breakdown = isinstance(found, dict)
    breakdown: dict[str, Any] = found if isinstance(found, dict) else {}
    return Usage(
        input_tokens=raw.get("input_tokens") or 0,
        output_tokens=raw.get("output_tokens") or 0,
        cache_creation_input_tokens=raw.get("cache_creation_input_tokens") or 0,
        cache_read_input_tokens=raw.get("cache_read_input_tokens") or 0,
        cache_creation_5m_input_tokens=(
            breakdown.get("ephemeral_5m_input_tokens") or 0 if has_breakdown else None
        ),
        cache_creation_1h_input_tokens=(
            breakdown.get("ephemeral_1h_input_tokens") or 0 if has_breakdown else None
        ),
    )


def parse_message(body: bytes) -> tuple[str, str | None, Usage, str]:
    """(text, stop_reason, usage, model) from a Messages API response body."""
    data = json.loads(body)
    text = "".join(b.get("text", "") for b in data.get("content") or () if b.get("type") == "text")
    return text, data.get("stop_reason"), _usage(data.get("usage") or {}), data["model"]


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value:
            try:
                return float(value) * scale
            except ValueError:
                continue
    return None


def ratelimit_headers(headers: Any) -> dict[str, str]:
    """The provider's anthropic-ratelimit-* headers and its ``date`` (the limiter follows
    them: farm.capacity.headers)."""
    if headers is None:
        return {}
    return {k.lower(): v for k, v in headers.items()
            if k.lower().startswith("anthropic-ratelimit-") or k.lower() == "date"}


SAMPLING = ("temperature", "top_p", "top_k")


def call(client: anthropic.Anthropic, model: str, request: JobRequest,
         cache: CacheSetting = "off") -> CallResult:
    """One provider call; raises ProviderError with a classified kind on failure. ``cache``:
    the prompt-cache TTL (farm.costs.prompt_cache.cache_ttl), "off" for none."""
    params = with_breakpoints(wire_body(model, request), model, cache)
    started = time.monotonic()
    try:
        # the raw response, read as JSON: the farm needs five fields, and skipping the SDK's
        # model construction saves about 0.45 ms of CPU per call (measured); errors still
        # raise the SDK's exceptions
        # the sampling parameters left the SDK's signature in anthropic 1.0: they go in the
        # body as they are, through extra_body (the wire body is the same)
        sampling = {k: params[k] for k in SAMPLING if k in params}
        raw = client.messages.with_raw_response.create(
            **{k: v for k, v in params.items() if k not in sampling},
            extra_body=sampling or None)
    except anthropic.APIStatusError as exc:
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        raw_error = body.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        raise ProviderError(
            kind_for_status(
                exc.status_code, str(error.get("type", "")), str(error.get("message", ""))
            ),
            f"{exc.status_code} {error.get('type', type(exc).__name__)}: "
            f"{error.get('message', '')}"[:2000],
            status=exc.status_code,
            retry_after_s=_retry_after(exc.response.headers),
            request_id=exc.request_id,
            latency_s=time.monotonic() - started,
            ratelimit=ratelimit_headers(exc.response.headers),
        ) from None
    except anthropic.APITimeoutError:
        raise ProviderError(
            ErrorKind.TIMEOUT, "request timed out", latency_s=time.monotonic() - started
        ) from None
    except anthropic.APIConnectionError as exc:
        raise ProviderError(
            ErrorKind.CONNECTION, f"connection error: {type(exc.__cause__).__name__}",
            latency_s=time.monotonic() - started,
        ) from None
    text, stop_reason, usage, served = parse_message(raw.http_response.content)
    return CallResult(
        text=text,
        stop_reason=stop_reason,
        usage=usage,
        model=served,
        request_id=raw.headers.get("request-id"),
        latency_s=time.monotonic() - started,
        ratelimit=ratelimit_headers(raw.headers),
    )
