"""The Messages API body of one call, built from the request as sent (instructions in).

One builder for every way the farm calls the model (a synchronous call, a Message Batch
request) and for the memo key (farm.memo.key hashes exactly this body): whatever reaches the
provider is in it, and nothing else. Prompt caching adds its ``cache_control`` breakpoints
afterwards (farm.costs.prompt_cache), which change the price, never the answer.
"""

from __future__ import annotations

from typing import Any

from farm.jobs import JobRequest


def wire_body(model: str, request: JobRequest) -> dict[str, Any]:
    """The JSON body of a Messages API call of ``request`` on ``model`` (no streaming)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": request.messages(),
    }
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = [dict(tool) for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = dict(request.tool_choice)
    if request.stop_sequences:
        body["stop_sequences"] = list(request.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return body
