"""The sampling parameters reach the wire: anthropic 1.0 took temperature, top_p and top_k
out of Messages.create's signature (a keyword argument raises TypeError before anything is
sent), so the call sends them in extra_body, and the body on the wire is wire_body's."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from farm.jobs import JobRequest
from farm.provider.body import wire_body
from farm.provider.messages import call

ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
          "content": [{"type": "text", "text": "Jupiter"}], "stop_reason": "end_turn",
          "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 2}}


@pytest.mark.parametrize("fields", [
    {},
    {"temperature": 0.3},
    {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "stop_sequences": ("END",)},
])
def test_the_body_on_the_wire_is_wire_body(fields: dict[str, Any]) -> None:
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json=ANSWER)

    client = anthropic.Anthropic(api_key="k", base_url="http://provider.invalid",
                                 max_retries=0,
                                 http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    request = JobRequest(prompt="Largest planet?", max_tokens=16, **fields)
    try:
        result = call(client, "claude-haiku-4-5", request)
    finally:
        client.close()
    assert result.text == "Jupiter"
    assert bodies == [wire_body("claude-haiku-4-5", request)]
