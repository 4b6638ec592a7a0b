"""The simulated Message Batches API (half-price, asynchronous Messages requests).

Routes (the API key checked as for /v1/messages): POST /v1/messages/batches (create),
GET /v1/messages/batches (list, newest first: limit 1..1000 (20), after_id / before_id),
GET /v1/messages/batches/{id}, POST /v1/messages/batches/{id}/cancel, GET
/v1/messages/batches/{id}/results (JSONL, once ended; results_url points here, on the host
the client used), DELETE /v1/messages/batches/{id} (once ended). Rules and wire format:
``farm.sim.batch_wire``.

A task per batch processes each request when it is due (spread over the config's
``batch_processing_s`` at creation; yielding to the event loop every few hundred) with the
same generation as /v1/messages (text, usage, the shared prompt cache) but none of its
rate limits, latency, storms or faults. Markers in a request's last user message:
``[[sim:batch_expire]]`` ends it "expired", ``[[sim:status=N]]`` (N != 200) or
``[[sim:spend_limit]]`` "errored" with that API error; a params body /v1/messages would
refuse ends "errored" with that error. When the batch ends, its results are counted in
/_sim/stats "batches" and the succeeded ones billed at half price.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from farm.sim import batch_wire as bw
from farm.sim.billing import bill
from farm.sim.content import cache_lookup
from farm.sim.generate import compose, read_prompt
from farm.sim.state import STATE, SimState
from farm.sim.wire import (
    SPEND_LIMIT,
    SimError,
    check_api_key,
    error_response,
    new_request_id,
    validate_body,
)

Handler = Callable[[web.Request, SimState], Awaitable[web.StreamResponse]]
_CHUNK = 500  # requests processed, or result lines written, between two yields


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The API key check, and any SimError as the API's error body, around ``handler``."""

    async def route(request: web.Request) -> web.StreamResponse:
        state, rid = request.app[STATE], new_request_id()
        try:
            check_api_key(request, state.config.require_api_key)
            resp = await handler(request, state)
        except SimError as e:
            error = error_response(e, rid)
            if e.status == 413:  # answer, then close: the rest of the body is never read
                error.force_close()
                await error.prepare(request)
                await error.write_eof()
                request.protocol.force_close()  # the transport flushes the answer first
            return error
        if not resp.prepared:
            resp.headers["request-id"] = rid
        return resp

    return route


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _batch(request: web.Request, state: SimState) -> bw.Batch:
    batch_id = request.match_info["batch_id"]
    if (batch := state.batches.get(batch_id)) is None:
        raise SimError(404, f"message batch {batch_id} not found")
    return batch


async def _read_capped(request: web.Request) -> bytes:
    """The body, or a 413 once it is over the batch size limit (before reading, if declared)."""
    too_large = SimError(413, f"Request exceeds the maximum size of a message batch "
                              f"({bw.MAX_BODY_BYTES // (1024 * 1024)} MB)")
    if (request.content_length or 0) > bw.MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > bw.MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def create(request: web.Request, state: SimState) -> web.StreamResponse:
    try:
        body = json.loads(await _read_capped(request))
    except ValueError:
        raise SimError(400, "There was an error parsing the body of your request") from None
    if problem := bw.validate_batch(body):
        raise SimError(400, problem)
    requests = body["requests"]
    batch = bw.Batch(bw.new_batch_id(), [r["custom_id"] for r in requests],
                     [r["params"] for r in requests], time.time(),
                     state.config.batch_processing_s)
    state.batches[batch.id] = batch
    state.batch_counts.update(created=1, requests=batch.size)
    task = asyncio.create_task(_process(state, batch), name=f"sim-{batch.id}")
    state.batch_tasks.add(task)
    task.add_done_callback(state.batch_tasks.discard)
    return web.json_response(bw.batch_object(batch, _origin(request)))


async def listing(request: web.Request, state: SimState) -> web.StreamResponse:
    try:
        limit, after, before = bw.list_query(request.query)
        ids, has_more = bw.page(list(reversed(state.batches)), limit, after, before)
    except ValueError as e:
        raise SimError(400, str(e)) from None
    origin = _origin(request)
    return web.json_response({"data": [bw.batch_object(state.batches[i], origin) for i in ids],
                              "has_more": has_more, "first_id": ids[0] if ids else None,
                              "last_id": ids[-1] if ids else None})


async def retrieve(request: web.Request, state: SimState) -> web.StreamResponse:
    return web.json_response(bw.batch_object(_batch(request, state), _origin(request)))


async def cancel(request: web.Request, state: SimState) -> web.StreamResponse:
    batch = _batch(request, state)
    if batch.ended_at is not None:
        raise SimError(400, f"message batch {batch.id} has already ended; it cannot be canceled")
    if batch.cancel_initiated_at is None:
        batch.cancel_initiated_at = time.time()
        batch.wakeup.set()
    return web.json_response(bw.batch_object(batch, _origin(request)))


async def delete(request: web.Request, state: SimState) -> web.StreamResponse:
    batch = _batch(request, state)
    if batch.ended_at is None:
        raise SimError(400, f"message batch {batch.id} is still processing; cancel it and wait "
                            "for it to end before deleting it")
    del state.batches[batch.id]
    return web.json_response({"id": batch.id, "type": "message_batch_deleted"})


async def results(request: web.Request, state: SimState) -> web.StreamResponse:
    batch = _batch(request, state)
    if batch.ended_at is None:
        raise SimError(400, f"message batch {batch.id} has not ended (processing_status "
                            f"{batch.status}); its results are not available yet")
    binary = "application/binary" in request.headers.get("accept", "")
    resp = web.StreamResponse(headers={
        "content-type": "application/binary" if binary else "application/x-jsonl",
        "request-id": new_request_id()})
    await resp.prepare(request)
    lines: list[str] = []
    for n, i in enumerate(bw.result_order(state.config.seed, batch.custom_ids), 1):
        lines.append(json.dumps({"custom_id": batch.custom_ids[i], "result": batch.results[i]},
                                separators=(",", ":")) + "\n")
        if n % _CHUNK == 0 or n == batch.size:
            await resp.write("".join(lines).encode())
            lines.clear()
    await resp.write_eof()
    return resp


def result_of(state: SimState, params: Any, now: float) -> dict[str, Any]:
    """One request's result, from the same generation as /v1/messages (no rate limits)."""
    try:
        if problem := validate_body(params):
            raise SimError(*problem)
        prompt = read_prompt(params)
        if "batch_expire" in prompt.marks:
            return {"type": "expired"}
        if "spend_limit" in prompt.marks:
            raise SimError(429, SPEND_LIMIT)
        if (status := int(prompt.marks.get("status", 200))) != 200:
            raise SimError(status)
    except SimError as e:
        return {"type": "errored", "error": {"type": "error", "error": e.error_object()}}
    cached = cache_lookup(state.cache, prompt.points, now, commit=True)
    cfg = state.config
    return {"type": "succeeded",
            "message": compose(params, prompt, cached, cfg.seed, cfg.weak_models)}


async def _process(state: SimState, batch: bw.Batch) -> None:
    """Process each request when it is due; end the batch after the last, on a cancel (what
    was due before it is still processed) or at its expiry; what is left ends "canceled" or
    "expired"."""
    done, size, start, span = 0, batch.size, batch.created_at, batch.processing_s
    while done < size:
        now, stop = time.time(), batch.cancel_initiated_at
        due = bw.due_count(size, start, span, min(now, stop or now, batch.expires_at))
        if due > done:
            for _ in range(done, due):
                batch.results.append(result_of(state, batch.params[done], now))
                done += 1
                if done % _CHUNK == 0:
                    await asyncio.sleep(0)
            continue
        if stop is not None or now >= batch.expires_at:
            break
        wake = min(bw.next_due(size, start, span, done), batch.expires_at)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.wakeup.wait(), max(0.0, wake - now))
    left = {"type": "canceled" if batch.cancel_initiated_at is not None else "expired"}
    batch.results.extend(dict(left) for _ in range(size - len(batch.results)))
    await _end(state, batch)


async def _end(state: SimState, batch: bw.Batch) -> None:
    """Count the results and bill the succeeded ones at half price (yielding as it goes),
    then mark the batch ended: its counts, bill and status change together."""
    found, amount = Counter[str](), Decimal(0)
    for n, result in enumerate(batch.results, 1):
        found[result["type"]] += 1
        if result["type"] == "succeeded":
            message = result["message"]
            amount += bill(message["model"], message["usage"], batch=True) or 0
        if n % _CHUNK == 0:
            await asyncio.sleep(0)
    state.count_batch(found, amount)
    batch.ended_at, batch.params = time.time(), []


def routes() -> list[web.RouteDef]:
    base = "/v1/messages/batches"
    return [web.post(base, _api(create)), web.get(base, _api(listing)),
            web.get(base + "/{batch_id}", _api(retrieve)),
            web.delete(base + "/{batch_id}", _api(delete)),
            web.post(base + "/{batch_id}/cancel", _api(cancel)),
            web.get(base + "/{batch_id}/results", _api(results))]


async def stop_tasks(app: web.Application) -> None:
    """On shutdown: cancel the batches still processing and wait for their tasks."""
    tasks = list(app[STATE].batch_tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
