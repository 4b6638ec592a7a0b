"""Prompt caching of a call: its TTL, and its body with the planned breakpoints. Pure.

The TTL of a job's calls is the first that says something of: the job's ``cache``, its
queue's ``prompt_cache`` (FARM_QUEUES), the farm's FARM_PROMPT_CACHE ("5m" unless set).
``with_breakpoints`` places the ``cache_control`` markers that farm.costs.caching plans: a
system string becomes one text block, a tool or document block gains the marker. The
body it is given is never changed (a new one is returned), and a body with no breakpoint to
place is returned as it is. Caching changes what a call costs, never its answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farm.costs.caching import CacheSetting, Plan, plan_breakpoints, resolve_ttl
from farm.jobs import JobRequest
from farm.settings import Settings


def queue_ttls(settings: Settings) -> dict[str, CacheSetting]:
    """The queues that set a prompt_cache of their own, and theirs."""
    return {q.name: q.prompt_cache for q in settings.queues if q.prompt_cache is not None}


def cache_ttl(request: JobRequest, queue: str, settings: Settings) -> CacheSetting:
    """The prompt-cache TTL (or "off") of ``request``'s calls on ``queue``."""
    return resolve_ttl(request.cache, queue_ttls(settings).get(queue), settings.prompt_cache)


def cache_control(ttl: CacheSetting) -> dict[str, str]:
    """The marker of a breakpoint: ephemeral, with ``"ttl": "1h"`` for the hour."""
    if ttl == "off":
        raise ValueError("no cache_control marker when prompt caching is off")
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": "1h"}


def apply_plan(body: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """A copy of ``body`` with a marker on each of ``plan``'s breakpoints."""
    out = dict(body)
    if not plan.breakpoints:
        return out
    for point in plan.breakpoints:
        marker = cache_control(plan.ttl)
        if point.section == "tools":
            tools = out["tools"] = list(out["tools"])
            tools[point.index] = {**tools[point.index], "cache_control": marker}
        elif point.section == "system":
            system = out["system"]
            blocks = ([{"type": "text", "text": system}] if isinstance(system, str)
                      else list(system))
            blocks[point.index] = {**blocks[point.index], "cache_control": marker}
            out["system"] = blocks
        else:
            assert point.block is not None  # a message breakpoint is always on a block
            messages = out["messages"] = list(out["messages"])
            message = messages[point.index] = dict(messages[point.index])
            content = message["content"] = list(message["content"])
            content[point.block] = {**content[point.block], "cache_control": marker}
    return out


def with_breakpoints(body: Mapping[str, Any], model: str,
                     ttl: CacheSetting) -> dict[str, Any]:
    """``body`` with cache_control where its stable prefix reaches ``model``'s minimum
    cacheable length (farm.costs.caching.plan_breakpoints); "off": unchanged."""
    plan = plan_breakpoints(body, model, ttl)
    return apply_plan(body, plan) if plan.breakpoints else dict(body)
