"""Token estimates of the pieces of a Messages API body, from their characters. Pure.

Four characters a token, rounded up per piece (English prose runs nearer 3.5, so the
estimate errs short), plus a little framing: ``REQUEST_FRAMING`` once per request and
``MESSAGE_FRAMING`` per message (role markers). A tool counts by its JSON, a text block by
its text, any other block (an image, a document) by its JSON. ``cache_control`` markers are
left out: a prefix weighs the same before and after its breakpoints are placed.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4
REQUEST_FRAMING = 3
MESSAGE_FRAMING = 4


def text_tokens(text: str) -> int:
    """The tokens of a text: its characters / 4, rounded up (0 for an empty text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def json_tokens(value: Any) -> int:
    """The tokens of a JSON value (a tool, a non-text block) without its cache_control."""
    if isinstance(value, dict) and "cache_control" in value:
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return text_tokens(json.dumps(value, separators=(", ", ": "), sort_keys=True))


def block_tokens(block: Any) -> int:
    """The tokens of one content block: a string, a text block by its text, else its JSON."""
    if isinstance(block, str):
        return text_tokens(block)
    if isinstance(block, dict) and block.get("type") == "text":
        return text_tokens(str(block.get("text", "")))
    return json_tokens(block)
