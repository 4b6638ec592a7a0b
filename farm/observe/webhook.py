"""Alerts to a webhook in Alertmanager's payload format (version "4"), for
`farm exporter --webhook URL`: each round evaluates the rules on a fresh snapshot and, when
the set of firing alerts changed, POSTs the firing ones and those just resolved.
``Notifier.step`` is pure; ``post`` is the one I/O."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from farm.observe.evaluate import Alert, Key, evaluate
from farm.observe.figures import Snapshot
from farm.observe.rules import Thresholds, rule_annotations, show

RECEIVER = "farm-exporter"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _labels(alert: Alert) -> dict[str, str]:
    return {"alertname": alert.name, "severity": alert.rule.severity.value,
            **dict(alert.labels)}


def _entry(alert: Alert, t: Thresholds, status: str, ends: float | None) -> dict[str, Any]:
    labels = _labels(alert)
    notes = rule_annotations(alert.rule, t)
    notes.update(summary=alert.summary, value=show(alert.value, alert.rule.unit),
                 threshold=show(alert.threshold, alert.rule.unit))
    fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    return {"status": status, "labels": labels, "annotations": notes,
            "startsAt": rfc3339(alert.since),
            "endsAt": ZERO_TIME if ends is None else rfc3339(ends),
            "generatorURL": "", "fingerprint": fingerprint}


def payload(firing: list[Alert], resolved: list[Alert], t: Thresholds, now: float
            ) -> dict[str, Any]:
    """Alertmanager's webhook payload: status "firing" while any alert in it fires."""
    entries = ([_entry(a, t, "firing", None) for a in firing]
               + [_entry(a, t, "resolved", now) for a in resolved])
    common = dict(set.intersection(*(set(e["labels"].items()) for e in entries))) \
        if entries else {}
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved", "receiver": RECEIVER,
            "groupLabels": {}, "commonLabels": common, "commonAnnotations": {},
            "externalURL": "", "alerts": entries}


class Notifier:
    """The webhook loop's memory: since when each condition holds, what fires."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.since: Mapping[Key, float] = {}
        self.firing: dict[Key, Alert] = {}

    def step(self, snap: Snapshot, now: float) -> dict[str, Any] | None:
        """The payload to send after this snapshot, or None when nothing changed."""
        result = evaluate(snap, self.thresholds, now, self.since)
        self.since = result.since
        now_firing = {a.key: a for a in result.firing}
        started = [a for k, a in now_firing.items() if k not in self.firing]
        resolved = [a for k, a in self.firing.items() if k not in now_firing]
        self.firing = now_firing
        if not (started or resolved):
            return None
        return payload(list(now_firing.values()), resolved, self.thresholds, now)


def post(url: str, body: Mapping[str, Any], timeout_s: float = 10.0) -> int:
    """POST the payload as JSON; the HTTP status (raises on a connection error or 4xx/5xx)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return int(response.status)
