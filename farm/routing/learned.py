"""The learned complexity decision: the model shipped in farm/routing/model.json
(farm.routing.model) scores a job's features (farm.routing.features); complex at or above its
calibrated threshold. The reason names the three telling features that pushed hardest
towards the decision (common words and size figures are skipped). Pure but for reading the
model file once per process (lazily, on first use)."""

from __future__ import annotations

from functools import lru_cache

from farm.jobs import Complexity, JobRequest
from farm.routing.features import features
from farm.routing.model import Model, load, sigmoid


@lru_cache(maxsize=1)
def shipped() -> Model:
    return load()


# words too common to explain anything, and structural figures that only size the text
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "could", "do", "does",
    "for", "from", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my",
    "of", "on", "or", "our", "please", "so", "than", "that", "the", "their", "them", "then",
    "there", "these", "this", "to", "us", "was", "we", "were", "what", "when", "which", "who",
    "will", "with", "would", "you", "your", "lines", "length", "digits", "system",
))


def _telling(name: str) -> bool:
    return any(len(w) > 1 and w not in _STOP for w in name.partition(":")[2].split("_"))


def _label(name: str) -> str:
    kind, _, what = name.partition(":")
    words = what.replace("_", " ")
    return {"w": f'"{words}"', "b": f'"{words}"', "i": f'asks "{words}"',
            "ib": f'asks "{words}"'}.get(kind, words)


def decide(request: JobRequest, model: Model | None = None) -> tuple[Complexity, str, float]:
    """SIMPLE or COMPLEX, the reason (the score and its strongest signals) and the score."""
    model = model or shipped()
    parts = model.contributions(features(request.prompt, request.system))
    score = sigmoid(sum(parts.values()))
    complex_ = score >= model.threshold
    labels = dict.fromkeys(_label(n) for n in model.explain(parts, complex_, top=12)
                           if _telling(n))
    named = ", ".join(list(labels)[:3]) or "no strong signal"
    sign = ">=" if complex_ else "<"
    return (Complexity.COMPLEX if complex_ else Complexity.SIMPLE,
            f"score {score:.2f} {sign} {model.threshold:.2f}: {named}", score)
