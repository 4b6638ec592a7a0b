"""The simulator's wire rules shared by every route: the API key check, the error object
and its types, the ``[[sim:…]]`` markers and the Messages body's validation. Pure apart
from reading request headers; ``farm.sim.server`` and ``farm.sim.batches`` use them.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web

ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}
SPEND_LIMIT = ("This request would exceed your organization's monthly spend limit "
               "(enforced_spend_limit_reached). Raise it in the Console or wait for it to reset.")
_MARKER = re.compile(
    r"\[\[sim:(status|latency|tokens|refusal|spend_limit|batch_expire)(?:=(\d*\.?\d+))?\]\]")


class SimError(Exception):
    """An API error: its HTTP status, message and extra response headers."""

    def __init__(self, status: int, message: str | None = None, **headers: str) -> None:
        self.status, self.message = status, message or default_message(status)
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

    def error_object(self) -> dict[str, str]:
        """The inner ``{"type", "message"}`` object of the API's error body."""
        return {"type": ERRORS.get(self.status, "api_error"), "message": self.message}


def default_message(status: int) -> str:
    return {500: "Internal server error", 529: "Overloaded"}.get(status, "Simulated error")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def error_response(error: SimError, rid: str) -> web.Response:
    """``{"type": "error", "error": {...}, "request_id"}`` with the error's status and headers."""
    return web.json_response({"type": "error", "error": error.error_object(), "request_id": rid},
                             status=error.status, headers={**error.headers, "request-id": rid})


def check_api_key(request: web.Request, required: bool) -> None:
    """401 unless the request carries ``x-api-key`` or a bearer token (when ``required``)."""
    bearer = request.headers.get("authorization", "")
    if required and not (request.headers.get("x-api-key") or (
            bearer.startswith("Bearer ") and bearer[7:].strip())):
        raise SimError(401, "x-api-key header is required")


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
