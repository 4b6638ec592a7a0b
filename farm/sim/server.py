"""SIMULATED Anthropic Messages API (aiohttp) for tests and benchmarks; no network needed.

Point the SDK at it with ``base_url``/``ANTHROPIC_BASE_URL``. Routes: POST /v1/messages (JSON
or SSE), POST /v1/messages/count_tokens, GET /_sim/stats, POST /_sim/reset (zero counters;
clear buckets, prompt cache, fault RNG), GET|POST /_sim/config (POST RUNTIME_FIELDS as JSON;
a change reseeds the fault RNG and restarts the buckets).
Deterministic: usage and text depend only on (seed, model, system, messages, max_tokens);
token estimates, prompt caching and the output's size (farm.sim.content): reaching max_tokens
gives stop_reason "max_tokens". No minimum cacheable length.
Markers in the last user message: ``[[sim:status=N]]`` error N (400 401 403 404 413 429 500
529; 429 sends retry-after: 1, 5xx x-should-retry: true); ``[[sim:spend_limit]]`` 429 naming
enforced_spend_limit_reached (retry-after: 60, futile); ``[[sim:refusal]]`` 200 with
stop_reason "refusal"; ``[[sim:latency=S]]`` success after S s; ``[[sim:tokens=N]]`` N
output tokens; ``[[sim:weak=refusal|max_tokens|bad_json|self_check_fail]]`` that failure,
only on models whose id contains one of ``weak_models`` (default "haiku"), others answer
well; ``[[sim:opinion=complex]]`` the farm's second-opinion call answers complex (else
simple). JSON and self-check requests get valid JSON and a "SELF-CHECK: PASS" line
(farm.sim.answers). Checks in order: api key, body, markers, storms (529: overload_until for
every model, overload_models[model] for one), faults (one seeded draw: 529 below
fault_529_rate, else 500 below both rates' sum; no quota used), rate limits (429). Limits
(farm.sim.limits): token buckets per model refilling limit/60 per s, of capacity the
per-minute limit, or with burst_s (short-interval enforcement) burst_s seconds of it (a cost
above that is admitted when the bucket is full, taking it below zero); from
model_limits[model] {rpm, itpm, otpm} where given, else rpm/itpm/otpm_limit. RPM charges 1,
ITPM input + cache writes (reads are free, as for most models); OTPM, like the real service,
charges max_tokens on admission (up to the capacity must be free) and refunds the unused
part at the end. Successes and every 429 carry the model's anthropic-ratelimit-* headers
(-limit per minute; none if it has no limits). Errors return at once; a success takes
fixed_latency_s if set, else ttft_s + output_tokens / output_tokens_per_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import secrets
import time
from collections import Counter
from typing import Any

import pydantic
from aiohttp import web

from farm.sim import answers
from farm.sim import limits as lim
from farm.sim.content import (
    REQ_OVERHEAD,
    cache_lookup,
    cache_points,
    estimate_input_tokens,
    last_user_text,
    make_text,
    plan_output,
    prompt_segments,
    request_digest,
)
from farm.sim.limits import TokenBucket as TokenBucket
from farm.sim.limits import ratelimit_headers as ratelimit_headers


class SimConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8787
    ttft_s: float = pydantic.Field(0.2, ge=0)
    output_tokens_per_s: float = pydantic.Field(200.0, gt=0)
    fixed_latency_s: float | None = pydantic.Field(None, ge=0)
    rpm_limit: int | None = pydantic.Field(None, ge=1)
    itpm_limit: int | None = pydantic.Field(None, ge=1)
    otpm_limit: int | None = pydantic.Field(None, ge=1)
    burst_s: float | None = pydantic.Field(None, gt=0, le=60)  # None: full-minute buckets
    fault_529_rate: float = pydantic.Field(0.0, ge=0, le=1)
    fault_500_rate: float = pydantic.Field(0.0, ge=0, le=1)
    overload_until: float | None = None  # every model answers 529 until then (epoch s)
    overload_models: dict[str, float] = pydantic.Field(default_factory=dict)  # model → until
    model_limits: dict[str, dict[str, int]] = pydantic.Field(default_factory=dict)
    seed: int = 0
    require_api_key: bool = True
    # [[sim:weak=…]] applies to models whose id contains one of these (farm.sim.answers)
    weak_models: tuple[str, ...] = ("haiku",)

    _check_limits = pydantic.field_validator("model_limits", mode="before")(lim.check_model_limits)

    def overloaded(self, model: str, now: float) -> bool:
        return max(self.overload_until or 0.0, self.overload_models.get(model, 0.0)) > now


RUNTIME_FIELDS = frozenset(SimConfig.model_fields) - {"host", "port"}
ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}
SPEND_LIMIT = ("This request would exceed your organization's monthly spend limit "
               "(enforced_spend_limit_reached). Raise it in the Console or wait for it to reset.")
STATS = ("requests_total", "messages_requests", "count_tokens_requests", "successful_calls",
         "streamed_calls", "input_tokens", "output_tokens", "in_flight", "max_in_flight")
_MARKER = re.compile(r"\[\[sim:(status|latency|tokens|refusal|spend_limit)(?:=(\d*\.?\d+))?\]\]")

def parse_markers(text: str) -> dict[str, float]:
    """The ``[[sim:…]]`` markers in ``text`` (flags are 1.0); malformed ones are ignored."""
    return {k: float(v or 1) for k, v in _MARKER.findall(text)} if "[[sim:" in text else {}

def validate_body(body: Any, need_max_tokens: bool = True) -> tuple[int, str] | None:
    """(status, message) of the first problem the real API would report, else None."""
    if not isinstance(body, dict):
        return 400, "Request body must be a JSON object"
    required = ("model", "max_tokens", "messages") if need_max_tokens else ("model", "messages")
    if missing := next((name for name in required if name not in body), None):
        return 400, f"{missing}: Field required"
    model, max_tokens, messages = body["model"], body.get("max_tokens", 1), body["messages"]
    problem = (
        "model: Input should be a valid string" if not isinstance(model, str)
        else "max_tokens: Input should be a valid integer" if type(max_tokens) is not int
        else "max_tokens: Input should be greater than or equal to 1" if max_tokens < 1
        else "messages: Input should be a valid list" if not isinstance(messages, list)
        else "messages: at least one message is required" if not messages
        else "system: Input should be a valid list"
        if not isinstance(body.get("system", ""), (str, list)) else None)
    if problem:
        return 400, problem
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            return 400, f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(msg.get("content"), (str, list)):
            why = "Input should be a valid list" if "content" in msg else "Field required"
            return 400, f"messages.{i}.content: {why}"
    return None if model.startswith("claude-") else (404, f"model: {model}")

class SimState:
    """The app's mutable holder: current config, counters, rate-limit buckets, prompt cache."""

    def __init__(self, config: SimConfig) -> None:
        self.config, self.counts = config, Counter[str]()
        self.reset()

    def reset(self) -> None:
        self.counts = Counter({**dict.fromkeys(STATS, 0), "in_flight": self.counts["in_flight"]})
        self.by_status, self.by_model = Counter[int](), Counter[str]()
        self.ok_by_model, self.cache = Counter[str](), dict[str, float]()
        self.limited_by_model, self.overloaded_by_model = Counter[str](), Counter[str]()
        self.rng = random.Random(self.config.seed)
        self.buckets: dict[str, dict[str, TokenBucket]] = {}

    def buckets_for(self, model: str, now: float) -> dict[str, TokenBucket]:
        if model not in self.buckets:
            c = self.config
            default = {"rpm": c.rpm_limit, "itpm": c.itpm_limit, "otpm": c.otpm_limit}
            limits = lim.limits_for(model, c.model_limits, default)
            self.buckets[model] = lim.make_buckets(limits, now, c.burst_s)
        return self.buckets[model]

    def count_error(self, model: str, status: int) -> None:
        if status == 429:
            self.limited_by_model[model] += 1
        elif status == 529:
            self.overloaded_by_model[model] += 1

STATE = web.AppKey("farm_sim_state", SimState)

class SimError(Exception):
    def __init__(self, status: int, message: str | None = None, **headers: str) -> None:
        default = {500: "Internal server error", 529: "Overloaded"}.get(status, "Simulated error")
        self.status, self.message = status, message or default
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

async def _endpoint(request: web.Request) -> web.StreamResponse:
    state, rid = request.app[STATE], "req_" + secrets.token_hex(12)
    counts, messages = state.counts, request.path == "/v1/messages"
    counts.update(("requests_total", "in_flight",
                   "messages_requests" if messages else "count_tokens_requests"))
    counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
    model: str | None = None
    try:
        bearer = request.headers.get("authorization", "")
        if state.config.require_api_key and not (request.headers.get("x-api-key") or (
                bearer.startswith("Bearer ") and bearer[7:].strip())):
            raise SimError(401, "x-api-key header is required")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise SimError(400, "There was an error parsing the body of your request") from None
        if problem := validate_body(body, need_max_tokens=messages):
            raise SimError(*problem)
        if messages:
            model = body["model"]
            resp = await _generate(request, state, body, rid)
        else:
            resp = web.json_response({"input_tokens": estimate_input_tokens(body)},
                                     headers={"request-id": rid})
    except SimError as e:
        if model:
            state.count_error(model, e.status)
        error = {"type": ERRORS.get(e.status, "api_error"), "message": e.message}
        resp = web.json_response({"type": "error", "error": error, "request_id": rid},
                                 status=e.status, headers={**e.headers, "request-id": rid})
    finally:
        counts["in_flight"] -= 1
    state.by_status[resp.status] += 1
    return resp

async def _generate(request: web.Request, state: SimState, body: dict[str, Any], rid: str
                    ) -> web.StreamResponse:
    model, max_tokens, cfg, now = body["model"], body["max_tokens"], state.config, time.time()
    state.by_model[model] += 1
    marks = parse_markers(prompt := last_user_text(body["messages"]))
    buckets = state.buckets_for(model, now)
    if "spend_limit" in marks:
        raise SimError(429, SPEND_LIMIT, retry_after="60", **lim.current_headers(buckets, now))
    p529, p500 = cfg.fault_529_rate, cfg.fault_500_rate
    draw = state.rng.random() if p529 or p500 else 1.0
    status = int(marks.get("status", 529 if cfg.overloaded(model, now) or draw < p529
                           else 500 if draw < p529 + p500 else 200))
    if status != 200:  # a 429 tells when to come back and how the limits stand, like the API
        limited = {"retry_after": "1", **lim.current_headers(buckets, now)} if status == 429 else {}
        raise SimError(status, **limited, **({"x_should_retry": "true"} if status >= 500 else {}))
    segs = prompt_segments(body)
    total_in = REQ_OVERHEAD + sum(seg[0] for seg in segs)
    points = cache_points(model, segs) if any(seg[1] for seg in segs) else []
    read, write_5m, write_1h = cache_lookup(state.cache, points, now)
    costs = {"requests": 1, "input-tokens": total_in - read, "output-tokens": max_tokens}
    wait, kind = lim.admission_wait(buckets, costs, now)
    if wait > 0:
        raise SimError(429, f"This request would exceed your organization's rate limit of "
                       f"{buckets[kind].limit} {kind.replace('-', ' ')} per minute. Please "
                       "try again later.", retry_after=str(math.ceil(wait)),
                       **ratelimit_headers(buckets, now))
    for k, b in buckets.items():
        b.level -= costs[k]
    cache_lookup(state.cache, points, now, commit=True)
    digest, refusal = request_digest(cfg.seed, body), "refusal" in marks
    out, stop = (min(8, max_tokens), "refusal") if refusal else plan_output(
        prompt, digest, max_tokens, int(marks["tokens"]) if "tokens" in marks else None)
    shaped = None if refusal else answers.shape(model, body.get("system"), prompt, max_tokens,
                                                 digest, (out, stop), cfg.weak_models)
    if shaped is not None:
        out, stop = shaped.output_tokens, shaped.stop_reason
        refusal = stop == "refusal"
    delay = (marks["latency"] if "latency" in marks else cfg.fixed_latency_s
             if cfg.fixed_latency_s is not None else cfg.ttft_s + out / cfg.output_tokens_per_s)
    text = shaped.text if shaped is not None else (
        answers.REFUSAL_TEXT if refusal else make_text(digest, out))
    usage = {"input_tokens": total_in - read - write_5m - write_1h, "cache_creation_input_tokens":
             write_5m + write_1h, "cache_read_input_tokens": read, "cache_creation": {
                 "ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
             "output_tokens": out, "service_tier": "standard"}
    message: dict[str, Any] = {
        "id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": text}], "stop_reason": stop,
        "stop_sequence": None, "usage": usage}
    if refusal:
        message["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
    headers = {"request-id": rid, **ratelimit_headers(buckets, now)}
    try:
        if body.get("stream"):
            resp = await _stream(request, message, headers, delay, min(cfg.ttft_s, delay))
            state.counts["streamed_calls"] += 1
        else:
            await asyncio.sleep(delay)
            resp = web.json_response(message, headers=headers)
    finally:
        if bucket := buckets.get("output-tokens"):  # refund the unused part of max_tokens
            bucket.level = min(bucket.capacity, bucket.level + max_tokens - out)
    state.counts.update({"successful_calls": 1, "input_tokens": total_in, "output_tokens": out})
    state.ok_by_model[model] += 1
    return resp

def _sse(*events: dict[str, Any]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

async def _stream(request: web.Request, message: dict[str, Any], headers: dict[str, str],
                  delay: float, ttft: float) -> web.StreamResponse:
    usage, stop_details = message["usage"], message.pop("stop_details", None)
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    text = message["content"][0]["text"]
    step = max(8, -(-len(text) // 16))  # at most 16 deltas, cut anywhere like real tokens
    chunks = [text[i:i + step] for i in range(0, len(text), step)]
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None,
             **({"stop_details": stop_details} if stop_details else {})}
    final = {k: v for k, v in usage.items() if k.endswith("tokens")}
    resp = web.StreamResponse(headers={**headers, "cache-control": "no-cache",
                                       "content-type": "text/event-stream; charset=utf-8"})
    await asyncio.sleep(ttft)
    await resp.prepare(request)
    with contextlib.suppress(ConnectionResetError):  # the client went away: stop quietly
        empty = {"type": "text", "text": ""}
        await resp.write(_sse({"type": "message_start", "message": start}, {
            "type": "content_block_start", "index": 0, "content_block": empty}, {"type": "ping"}))
        for chunk in chunks:
            await asyncio.sleep((delay - ttft) / len(chunks))
            await resp.write(_sse({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": chunk}}))
        await resp.write(_sse({"type": "content_block_stop", "index": 0}, {
            "type": "message_delta", "delta": delta, "usage": final}, {"type": "message_stop"}))
        await resp.write_eof()
    return resp

async def _admin(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.path == "/_sim/reset":
        state.reset()
    elif request.method == "POST":  # /_sim/config
        try:
            patch = await request.json()
            if not isinstance(patch, dict) or set(patch) - RUNTIME_FIELDS:
                raise ValueError(f"only {sorted(RUNTIME_FIELDS)} can change at runtime")
            new = SimConfig.model_validate({**state.config.model_dump(), **patch})
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        state.config, state.rng, state.buckets = new, random.Random(new.seed), {}
    if request.path == "/_sim/config":
        return web.json_response(state.config.model_dump())
    return web.json_response({**state.counts, "by_status": state.by_status,
                              "by_model": state.by_model, "successful_by_model": state.ok_by_model,
                              "rate_limited_by_model": state.limited_by_model,
                              "overloaded_by_model": state.overloaded_by_model})

def make_app(config: SimConfig) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = SimState(config)
    app.add_routes([web.post("/v1/messages", _endpoint),
                    web.post("/v1/messages/count_tokens", _endpoint),
                    web.get("/_sim/stats", _admin), web.post("/_sim/reset", _admin),
                    web.route("*", "/_sim/config", _admin)])
    return app

def run(config: SimConfig) -> None:
    """Serve until SIGINT/SIGTERM (blocking); prints one line once listening."""
    line = "farm simulator listening on {} (SIMULATED Claude API)"
    web.run_app(make_app(config), host=config.host, port=config.port, access_log=None, backlog=4096,
                shutdown_timeout=2.0, print=lambda m: print(line.format(m.split()[3]), flush=True))
