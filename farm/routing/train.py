"""Training, calibrating and measuring the router's model, pure (the data comes in as rows;
`farm router train|calibrate|report` read and write the files).

A row: {"id", "family", "split": train|dev|test, "label": simple|complex, "prompt",
"system"?, "max_tokens"?}. Training is plain SGD on the logistic loss with L2, in a fixed
order (seeded), so the same data gives the same model. The test split is never used here to
choose anything: ``calibrate`` and the training settings look at dev only.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.routing.features import features
from farm.routing.model import DIM, Model, index, sigmoid

Row = Mapping[str, Any]


def split_of(row_id: str) -> str:
    """A labelled row's split, fixed by its id: sha256 mod 10: 0-5 train, 6-7 dev, 8-9 test.
    A row added later never moves an earlier one."""
    bucket = int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "dev" if bucket < 8 else "test"


def score(model: Model, row: Row) -> float:
    """The model's score of a labelled row."""
    return model.score(features(str(row["prompt"]), row.get("system")))


def vector(row: Row, dim: int = DIM) -> dict[int, float]:
    out: dict[int, float] = {}
    for name, value in features(str(row["prompt"]), row.get("system")).items():
        slot = index(name, dim)
        out[slot] = out.get(slot, 0.0) + value
    return out


def train(rows: Sequence[Row], *, l2: float = 3e-3, epochs: int = 30, rate: float = 0.5,
          seed: int = 0, dim: int = DIM) -> dict[int, float]:
    data = [(vector(r, dim), 1.0 if r["label"] == "complex" else 0.0) for r in rows]
    weights: dict[int, float] = {}
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(data)
        for x, y in data:
            g = sigmoid(sum(weights.get(j, 0.0) * v for j, v in x.items())) - y
            for j, v in x.items():
                w = weights.get(j, 0.0)
                weights[j] = w - rate * (g * v + l2 * w)
    return weights


@dataclass(frozen=True)
class Figures:
    n: int
    accuracy: float
    complex_recall: float
    complex_share: float  # of the jobs, sent to the complex model


def measure(model: Model, rows: Iterable[Row], threshold: float | None = None) -> Figures:
    cut = model.threshold if threshold is None else threshold
    n, right, complex_, caught, sent = 0, 0, 0, 0, 0
    for r in rows:
        said = score(model, r) >= cut
        truth = r["label"] == "complex"
        n, right, sent = n + 1, right + (said == truth), sent + said
        complex_, caught = complex_ + truth, caught + (said and truth)
    return Figures(n, right / max(1, n), caught / max(1, complex_), sent / max(1, n))


def by_family(model: Model, rows: Sequence[Row]) -> dict[str, Figures]:
    families = sorted({str(r["family"]) for r in rows})
    return {f: measure(model, [r for r in rows if r["family"] == f]) for f in families}


def calibrate(model: Model, rows: Sequence[Row], *, recall: float | None = None,
              share: float | None = None) -> float:
    """The highest threshold whose complex recall on ``rows`` is at least ``recall``, or the
    one that sends closest to ``share`` of them to the complex model."""
    if (recall is None) == (share is None):
        raise ValueError("calibrate for a target complex recall or a target share, not both")
    scored = sorted(((score(model, r), r["label"] == "complex") for r in rows), reverse=True)
    if not scored:
        raise ValueError("no rows to calibrate on")
    if share is not None:
        k = max(1, min(len(scored), round(share * len(scored))))
        return scored[k - 1][0]
    assert recall is not None
    total = sum(1 for _, c in scored if c)
    caught = 0
    for s, is_complex in scored:
        caught += is_complex
        if total and caught / total >= recall:
            return s
    return scored[-1][0]


def split_counts(rows: Iterable[Row]) -> Counter[tuple[str, str]]:
    return Counter((str(r["split"]), str(r["label"])) for r in rows)
