"""Classification: how complex a job is. Pure: no I/O but reading the shipped model once.

In order: the caller's hint (``metadata["complexity"]`` = "simple" or "complex") decides
outright; a job with tools is complex (an agent's multi-step work); else the learned model
(farm.routing.learned) scores the job's text, and the job is complex at or above the
model's calibrated threshold. The reason names what decided, for the learned model its
score and the signals that weighed most, e.g. ``score 0.91 >= 0.42: asks "why", "latency"``.

The keyword rules this replaced scored 54.4 % (complex recall 14.8 %) on the labelled data
of farm/routing/data; see README "Routing".
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.jobs import Complexity, JobRequest
from farm.routing import learned
from farm.routing.model import Model


@dataclass(frozen=True)
class Decision:
    complexity: Complexity  # SIMPLE or COMPLEX, never AUTO
    reason: str
    score: float | None = None  # the learned model's, None when a hint or tools decided


def hint_of(request: JobRequest) -> Complexity | None:
    hint = request.metadata.get("complexity", "").strip().lower()
    return Complexity(hint) if hint in ("simple", "complex") else None


def decide(request: JobRequest, model: Model | None = None) -> Decision:
    hint = hint_of(request)
    if hint is not None:
        return Decision(hint, f"metadata hint {hint.value}")
    if request.tools:
        n = len(request.tools)
        return Decision(Complexity.COMPLEX, f"{n} tool{'s' if n > 1 else ''} (an agent job)")
    complexity, reason, score = learned.decide(request, model)
    return Decision(complexity, reason, score)


def classify(request: JobRequest) -> tuple[Complexity, str]:
    """SIMPLE or COMPLEX (never AUTO) and a short reason naming the deciding signals."""
    got = decide(request)
    return got.complexity, got.reason
