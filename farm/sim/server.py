"""SIMULATED Anthropic Messages API (aiohttp) for tests and benchmarks; no network needed.

Point the SDK at it with ``base_url``/``ANTHROPIC_BASE_URL``. Routes: POST /v1/messages (JSON
or SSE), POST /v1/messages/count_tokens, the Message Batches under /v1/messages/batches
(farm.sim.batches), GET /_sim/stats (counters; "billed_usd" / "billed_batch_usd": what the
sim billed at farm.costs prices, sync successes at list price, batch results at half;
"batches": created, requests and results by type), POST /_sim/reset (zero counters and the
bill; clear buckets, prompt cache, batches, fault RNG), GET|POST /_sim/config (POST
RUNTIME_FIELDS as JSON; a change reseeds the fault RNG and restarts the buckets).
Deterministic: usage and text depend only on (seed, model, system, messages, max_tokens);
token estimates, prompt caching and the output's size (farm.sim.content): reaching max_tokens
gives stop_reason "max_tokens". A cache_control prefix below the model's minimum cacheable
length (1024 Sonnet 4.x, Opus 4/4.1; 2048 Haiku 3.x; 4096 Haiku 4.5, Opus 4.5/4.6, unknown
models) is neither written nor read, without error, as with the real API.
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
import time
from typing import Any

from aiohttp import web

from farm.sim import batches
from farm.sim import limits as lim
from farm.sim.content import cache_lookup, estimate_input_tokens
from farm.sim.generate import compose, read_prompt
from farm.sim.limits import TokenBucket, ratelimit_headers
from farm.sim.state import RUNTIME_FIELDS, STATE, SimConfig, SimState
from farm.sim.wire import (
    SPEND_LIMIT,
    SimError,
    check_api_key,
    error_response,
    new_request_id,
    parse_markers,
    validate_body,
)

__all__ = ["RUNTIME_FIELDS", "SimConfig", "SimState", "TokenBucket", "make_app", "parse_markers",
           "ratelimit_headers", "run", "validate_body"]

async def _endpoint(request: web.Request) -> web.StreamResponse:
    state, rid = request.app[STATE], new_request_id()
    counts, messages = state.counts, request.path == "/v1/messages"
    counts.update(("requests_total", "in_flight",
                   "messages_requests" if messages else "count_tokens_requests"))
    counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
    model: str | None = None
    try:
        check_api_key(request, state.config.require_api_key)
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
        resp = error_response(e, rid)
    finally:
        counts["in_flight"] -= 1
    state.by_status[resp.status] += 1
    return resp

async def _generate(request: web.Request, state: SimState, body: dict[str, Any], rid: str
                    ) -> web.StreamResponse:
    model, max_tokens, cfg, now = body["model"], body["max_tokens"], state.config, time.time()
    state.by_model[model] += 1
    prompt = read_prompt(body)
    marks, buckets = prompt.marks, state.buckets_for(model, now)
    if "spend_limit" in marks:
        raise SimError(429, SPEND_LIMIT, retry_after="60", **lim.current_headers(buckets, now))
    p529, p500 = cfg.fault_529_rate, cfg.fault_500_rate
    draw = state.rng.random() if p529 or p500 else 1.0
    status = int(marks.get("status", 529 if cfg.overloaded(model, now) or draw < p529
                           else 500 if draw < p529 + p500 else 200))
    if status != 200:  # a 429 tells when to come back and how the limits stand, like the API
        limited = {"retry_after": "1", **lim.current_headers(buckets, now)} if status == 429 else {}
        raise SimError(status, **limited, **({"x_should_retry": "true"} if status >= 500 else {}))
    read, _, _ = cache_lookup(state.cache, prompt.points, now)
    costs = {"requests": 1, "input-tokens": prompt.total_in - read, "output-tokens": max_tokens}
    wait, kind = lim.admission_wait(buckets, costs, now)
    if wait > 0:
        raise SimError(429, f"This request would exceed your organization's rate limit of "
                       f"{buckets[kind].limit} {kind.replace('-', ' ')} per minute. Please "
                       "try again later.", retry_after=str(math.ceil(wait)),
                       **ratelimit_headers(buckets, now))
    for k, b in buckets.items():
        b.level -= costs[k]
    cached = cache_lookup(state.cache, prompt.points, now, commit=True)
    message = compose(body, prompt, cached, cfg.seed, cfg.weak_models)
    out = message["usage"]["output_tokens"]
    delay = (marks["latency"] if "latency" in marks else cfg.fixed_latency_s
             if cfg.fixed_latency_s is not None else cfg.ttft_s + out / cfg.output_tokens_per_s)
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
    state.counts.update({"successful_calls": 1, "input_tokens": prompt.total_in,
                         "output_tokens": out})
    state.ok_by_model[model] += 1
    state.charge(model, message["usage"])
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
    return web.json_response(state.stats())

def make_app(config: SimConfig) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = SimState(config)
    app.add_routes([web.post("/v1/messages", _endpoint),
                    web.post("/v1/messages/count_tokens", _endpoint),
                    web.get("/_sim/stats", _admin), web.post("/_sim/reset", _admin),
                    web.route("*", "/_sim/config", _admin), *batches.routes()])
    app.on_cleanup.append(batches.stop_tasks)
    return app

def run(config: SimConfig) -> None:
    """Serve until SIGINT/SIGTERM (blocking); prints one line once listening."""
    line = "farm simulator listening on {} (SIMULATED Claude API)"
    web.run_app(make_app(config), host=config.host, port=config.port, access_log=None, backlog=4096,
                shutdown_timeout=2.0, print=lambda m: print(line.format(m.split()[3]), flush=True))
