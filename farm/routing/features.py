"""The router's features of a job, pure: what the learned model (farm.routing.model) weighs.

Words and word pairs of the whole text (system + prompt; a long one's first and last 16k
characters), counted on a log scale and normalised to length 1 so that pasted material does
not drown the ask; the words and pairs of the instruction lines (the first two and last two
non-empty lines of the prompt, and any line ending in '?') on their own, because the task is
said there; and a few structural figures (length, lines, questions, code, digits). Names are
kept (``w:error``, ``i:why``, ``s:code``) so that a decision can name what weighed most.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import pairwise

WINDOW = 16_000
_WORD = re.compile(r"[a-z][a-z0-9_']*")
_DIGIT = re.compile(r"\d")
_CODE = re.compile(r"```|\bdef \w|\bfunction\b|\bSELECT\b|\bclass \w|=>|;\n|\{\n")


def _window(text: str) -> str:
    return text if len(text) <= 2 * WINDOW else f"{text[:WINDOW]}\n{text[-WINDOW:]}"


def _grams(words: list[str], unigram: str, bigram: str) -> Counter[str]:
    found: Counter[str] = Counter(unigram + w for w in words)
    found.update(f"{bigram}{a}_{b}" for a, b in pairwise(words))
    return found


def instruction(prompt: str) -> str:
    """Where the ask is: the first two and last two non-empty lines, and every question."""
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    asked = lines[:2] + lines[-2:] + [line for line in lines if line.endswith("?")]
    return " ".join(asked)


def features(prompt: str, system: str | None = None) -> dict[str, float]:
    """Feature name -> value of one job (deterministic, bounded cost for any length)."""
    prompt, system = _window(prompt), _window(system or "")
    text = f"{system}\n{prompt}" if system else prompt
    counted = _grams(_WORD.findall(text.lower()), "w:", "b:")
    asked = _WORD.findall(instruction(prompt).lower())
    counted.update(dict.fromkeys((f"i:{w}" for w in asked), 1))
    counted.update(f"ib:{a}_{b}" for a, b in pairwise(asked))
    out = {name: 1 + math.log(n) for name, n in counted.items()}
    norm = math.sqrt(sum(v * v for v in out.values())) or 1.0
    out = {name: v / norm for name, v in out.items()}
    out.update({
        "s:length": math.log1p(len(text)) / 10,
        "s:lines": math.log1p(text.count("\n") + 1) / 5,
        "s:questions": min(prompt.count("?"), 5) / 5,
        "s:code": 1.0 if _CODE.search(text) else 0.0,
        "s:digits": len(_DIGIT.findall(text)) / max(1, len(text)),
        "s:system": 1.0 if system else 0.0,
        "s:bias": 1.0,
    })
    return out
