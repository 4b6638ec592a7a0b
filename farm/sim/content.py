"""The simulator's content: token estimates of a prompt, prompt-cache prefixes, the output's
size and text. Pure and deterministic (no I/O, the time is passed in); ``farm.sim.server``
serves them.

Input tokens: ceil(chars/4) per block, +4 per message, +3 per request (tools by their JSON,
media 1600). Output tokens: a target from the last user message ("N words"/"N tokens",
long-form or short-answer words, else 160) times a 0.6..1.4 hash jitter, in [min(16,
max_tokens), max_tokens]. A block with ``cache_control`` ends a cacheable prefix (tools,
system, messages): a prefix seen within its ttl ("5m" default, "1h") is read, the rest
written. As with the real API, a prefix shorter than the model's minimum cacheable length
(``min_cacheable_tokens``) is neither written nor read, and no error is raised.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

MSG_OVERHEAD, REQ_OVERHEAD, MEDIA_TOKENS = 4, 3, 1600
Segment = tuple[int, Any, Any]  # (tokens, cache_control, block)
CachePoint = tuple[str, int, float]  # (prefix key, prefix tokens, ttl in seconds)

def block_tokens(block: Any) -> int:
    if not isinstance(block, dict):
        return -(-len(block if isinstance(block, str) else json.dumps(block)) // 4)
    kind, inner = block.get("type"), block.get("content")
    if kind in ("image", "document"):
        return MEDIA_TOKENS
    if kind == "tool_result" and isinstance(inner, (str, list)):
        return 8 + sum(map(block_tokens, inner if isinstance(inner, list) else [inner]))
    return block_tokens(str(block.get("text", "")) if kind == "text" else json.dumps(block))

def prompt_segments(body: dict[str, Any]) -> list[Segment]:
    """Every prompt piece in cache-prefix order: tools, system, then the messages."""
    parts: list[Any] = [*(body.get("tools") or []), body.get("system") or []]
    for msg in body["messages"]:
        parts += [(msg["role"],), msg["content"]]  # the tuple stands for a message's overhead
    return [(MSG_OVERHEAD if isinstance(b, tuple) else block_tokens(b),
             b.get("cache_control") if isinstance(b, dict) else None, b)
            for part in parts for b in (part if isinstance(part, list) else [part])]

def estimate_input_tokens(body: dict[str, Any]) -> int:
    return REQ_OVERHEAD + sum(seg[0] for seg in prompt_segments(body))

# The simulator's own table (it models the API, independently of the farm's data), from
# the prompt caching docs; a dated snapshot id counts as its base model.
_MINIMUMS = {"claude-haiku-4-5": 4096, "claude-opus-4-5": 4096, "claude-opus-4-6": 4096,
             "claude-opus-4-1": 1024, "claude-opus-4": 1024, "claude-3-haiku": 2048,
             "claude-3-5-haiku": 2048}
_SONNET_4 = re.compile(r"claude-sonnet-4(-\d+)?")
_SNAPSHOT = re.compile(r"(.+)-\d{8}")
UNKNOWN_MINIMUM = 4096  # the largest: an unknown model caches nothing a known one would not

def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix ``model`` caches: 1024 for the Sonnet 4.x family and Opus 4/4.1,
    2048 for Haiku 3.x, 4096 for Haiku 4.5, Opus 4.5/4.6 and any model not listed."""
    base = found.group(1) if (found := _SNAPSHOT.fullmatch(model)) else model
    return 1024 if _SONNET_4.fullmatch(base) else _MINIMUMS.get(base, UNKNOWN_MINIMUM)

def cache_points(model: str, segs: list[Segment]) -> list[CachePoint]:
    """One point per block carrying cache_control whose prefix reaches the model's minimum:
    (prefix hash, prefix tokens, ttl)."""
    digest, total, points = hashlib.blake2b(model.encode(), digest_size=16), 0, []
    least = min_cacheable_tokens(model)
    for tokens, cc, block in segs:
        digest.update(json.dumps(block, sort_keys=True).encode())
        total += tokens
        if isinstance(cc, dict) and total >= least:
            points.append((digest.hexdigest(), total, 3600.0 if cc.get("ttl") == "1h" else 300.0))
    return points

def cache_lookup(cache: dict[str, float], points: list[CachePoint], now: float,
                 commit: bool = False) -> tuple[int, int, int]:
    """(read, 5m write, 1h write) tokens; ``cache``: prefix key → expiry; commit: store."""
    read = max((tok for key, tok, _ in points if cache.get(key, 0.0) > now), default=0)
    prev, writes = read, {300.0: 0, 3600.0: 0}
    for key, tok, ttl in points:
        writes[ttl], prev = writes[ttl] + max(0, tok - prev), max(tok, prev)
        if commit:
            cache.pop(key, None)
            cache[key] = now + ttl
    while len(cache) > 100_000:
        del cache[next(iter(cache))]
    return read, writes[300.0], writes[3600.0]

def request_digest(seed: int, body: dict[str, Any]) -> int:
    key = [seed, body["model"], body.get("system"), body["messages"], body["max_tokens"]]
    raw = json.dumps(key, separators=(",", ":"), default=str).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest())

_LENGTH = re.compile(r"(\d{1,6})[ -]*(words|tokens)")
_LONG = ("essay", "detailed", "long", "story", "article", "comprehensive", "elaborate")
_SHORT = ("one word", "yes or no", "brief", "short", "concise", "classify", "label")

def plan_output(prompt: str, digest: int, max_tokens: int, want: int | None) -> tuple[int, str]:
    """(output tokens, stop_reason) for the last user message; ``want`` forces the size."""
    if want is None:
        low = prompt.lower()
        found = _LENGTH.search(low)
        base = (int(found.group(1)) * (4 / 3 if found.group(2) == "words" else 1) if found
                else 800 if any(h in low for h in _LONG)
                else 24 if any(h in low for h in _SHORT) else 160)
        want = max(1, round(base * (0.6 + 0.8 * (digest & 0xFFFF) / 0xFFFF)))
    out = min(max_tokens, max(16, want))
    return out, "max_tokens" if out == max_tokens else "end_turn"

_LOREM = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed",
          "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna"]
_POOL_TEXT = " ".join(random.Random(7).choices(_LOREM, k=1 << 17)) + " "

def make_text(digest: int, output_tokens: int) -> str:
    """Lorem-like words, about 4 characters per output token, picked by ``digest``."""
    size = min(4 * output_tokens, 400_000)
    start = _POOL_TEXT.find(" ", digest % (len(_POOL_TEXT) - size - 64)) + 1
    end = max(_POOL_TEXT.rfind(" ", start, start + size), _POOL_TEXT.find(" ", start))
    return _POOL_TEXT[start].upper() + _POOL_TEXT[start + 1:end] + "."

def last_user_text(messages: list[Any]) -> str:
    content = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return content if isinstance(content, str) else " ".join(
        str(b.get("text", "")) for b in content if isinstance(b, dict))
