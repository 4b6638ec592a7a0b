"""The router's learned model, pure: logistic regression over hashed features
(farm.routing.features), loaded from a small JSON file shipped with the package.

score = sigmoid(sum of weight[hash(name)] * value); complex when score >= threshold. The
threshold is the model's own, set by `farm router calibrate` for a target complex recall or
a target share of jobs sent to the complex model. ``explain`` names the features that
pushed the score most towards its side.
"""

from __future__ import annotations

import array
import base64
import heapq
import json
import math
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DIM = 1 << 18
KNOWN = 1 << 16  # names whose weight a model keeps looked up (a job has a few hundred)
MODEL_PATH = Path(__file__).with_name("model.json")


def index(name: str, dim: int = DIM) -> int:
    """A feature's slot: CRC-32, stable across processes and Python versions (not ``hash``)
    and cheap (a job has a few hundred features)."""
    return zlib.crc32(name.encode()) % dim


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@dataclass(frozen=True)
class Model:
    weights: Mapping[int, float] = field(default_factory=dict)
    threshold: float = 0.5
    dim: int = DIM
    meta: Mapping[str, object] = field(default_factory=dict)  # how it was trained, figures
    # name -> weight, filled as names are met (words recur from job to job): a dict lookup
    # instead of encoding and hashing the name again; emptied when it holds KNOWN names
    _known: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def contributions(self, feats: Mapping[str, float]) -> dict[str, float]:
        known, out = self._known, {}
        for name, value in feats.items():
            weight = known.get(name)
            if weight is None:
                if len(known) >= KNOWN:
                    known.clear()
                weight = known[name] = self.weights.get(index(name, self.dim), 0.0)
            out[name] = weight * value
        return out

    def score(self, feats: Mapping[str, float]) -> float:
        return sigmoid(sum(self.contributions(feats).values()))

    def explain(self, parts: Mapping[str, float], complex_: bool, top: int = 3) -> list[str]:
        """The ``top`` feature names (of ``contributions``) that pushed hardest towards the
        decision."""
        sign = 1.0 if complex_ else -1.0
        ranked = heapq.nlargest(top, ((c * sign, name) for name, c in parts.items()
                                      if c * sign > 0 and name != "s:bias"))
        return [name for _, name in ranked]

    def to_json(self) -> str:
        """Weights as int16 steps of ``max|w| / 32767`` (a 1e-4 relative error at most),
        little-endian, zlib-compressed, base64: a few hundred KB for 2^18 slots."""
        scale = max((abs(w) for w in self.weights.values()), default=0.0) / 32767 or 1.0
        steps = array.array("h", bytes(2 * self.dim))
        for slot, w in self.weights.items():
            steps[slot] = round(w / scale)
        if sys.byteorder == "big":
            steps.byteswap()
        packed = base64.b64encode(zlib.compress(steps.tobytes(), 9)).decode()
        return json.dumps({"dim": self.dim, "threshold": self.threshold, "meta": dict(self.meta),
                           "scale": scale, "weights": packed}, indent=0)


def load(path: Path = MODEL_PATH) -> Model:
    raw = json.loads(path.read_text())
    steps = array.array("h", zlib.decompress(base64.b64decode(raw["weights"])))
    if sys.byteorder == "big":
        steps.byteswap()
    scale = float(raw["scale"])
    return Model({i: q * scale for i, q in enumerate(steps) if q}, float(raw["threshold"]),
                 int(raw["dim"]), dict(raw.get("meta", {})))
