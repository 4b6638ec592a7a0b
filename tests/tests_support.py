"""Small helpers shared by tests (importable: tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

import importlib.util
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from farm.capacity import limits
from farm.capacity.config import LimiterConfig
from farm.capacity.limits import ModelState
from farm.services import free_port
from farm.store.migrate import fresh_database

__all__ = ["free_port", "fresh_database", "ops_module", "random_headers", "wait_port"]

OPS = Path(__file__).resolve().parents[1] / "ops"


def ops_module(name: str) -> ModuleType:
    """The module ops/``name``.py, loaded once (ops/ is scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, OPS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wait_port(port: int, timeout: float = 20.0) -> None:
    from farm.services import wait_port as listening

    if not listening(port, timeout):
        raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def random_headers(rng: random.Random, *, otpm: int = 6_000, now: float | None = None
                   ) -> dict[str, str]:
    """Random anthropic-ratelimit-* headers: limits and remainders, each present or not; with
    ``now``, sometimes the requests bucket's reset too (a short one tells a short burst)."""
    headers: dict[str, str] = {}
    if now is not None and rng.random() < 0.5:
        reset = datetime.fromtimestamp(now + rng.choice([0.2, 1.0, 3.0, 30.0]), UTC)
        headers["anthropic-ratelimit-requests-reset"] = reset.isoformat().replace("+00:00", "Z")
    for name, limit in (("requests", 20), ("input-tokens", 30_000), ("output-tokens", otpm)):
        if rng.random() < 0.5:
            headers[f"anthropic-ratelimit-{name}-limit"] = str(rng.choice([limit, limit * 2]))
        if rng.random() < 0.5:
            left = rng.randint(0, limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(
                left if name == "requests" else left // 1000 * 1000)
    return headers


def _approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def assert_same_state(got: ModelState, want: ModelState,
                      ids: dict[str, str] | None = None, *, now: float | None = None) -> None:
    """Two limiter states agree (floats within rounding); ``ids`` maps ``got``'s grant ids
    to ``want``'s where they differ (Redis's against memory's)."""
    assert set(got.levels) == set(want.levels)
    assert dict(got.levels) == _approx(dict(want.levels))
    assert (got.updated is None) == (want.updated is None)
    if want.updated is not None:
        assert got.updated == _approx(want.updated)
    assert dict(got.observed) == dict(want.observed)
    assert got.answered == want.answered
    # a starved record past its time is gone from Redis (it expires), kept by the twin
    live = [s if s is not None and (now is None or s.until > now) else None
            for s in (got.starved, want.starved)]
    assert (live[0] is None) == (live[1] is None)
    if live[0] is not None and live[1] is not None:
        assert live[0].tenant == live[1].tenant
        assert (live[0].count, live[0].at, live[0].until) == _approx(
            (live[1].count, live[1].at, live[1].until))
    assert (got.burst is None) == (want.burst is None)
    if got.burst is not None and want.burst is not None:
        assert (got.burst.seconds, got.burst.at) == _approx((want.burst.seconds, want.burst.at))
    assert got.throttle == want.throttle
    assert got.throttle_base == want.throttle_base
    assert (got.rate is None) == (want.rate is None)
    if got.rate is not None and want.rate is not None:
        assert (got.rate.count, got.rate.updated) == _approx((want.rate.count, want.rate.updated))
    assert (got.paused_until is None) == (want.paused_until is None)
    if want.paused_until is not None:
        assert got.paused_until == _approx(want.paused_until)
    assert dict(got.active) == _approx(dict(want.active))
    assert set(got.usage) == set(want.usage)
    for tenant, usage in want.usage.items():
        assert (got.usage[tenant].count, got.usage[tenant].updated) == _approx(
            (usage.count, usage.updated))
    mapped = {(ids or {}).get(g, g): v for g, v in got.inflight.items()}
    assert {g: t for g, (t, _) in mapped.items()} == {g: t for g, (t, _) in want.inflight.items()}
    assert {g: e for g, (_, e) in mapped.items()} == _approx(
        {g: e for g, (_, e) in want.inflight.items()})


def throttle_both(lim: Any, config: LimiterConfig, states: dict[str, ModelState], model: str,
                  now: float, percent: float | None) -> str:
    """One throttle on a limiter (Redis or memory) and on the pure twin (``states``), which
    must agree; what it did: "nothing to throttle", "throttled by rate" or "throttle"."""
    try:
        want, states[model] = limits.throttle(config, model, states[model], now,
                                              limits.check_percent(percent))
    except limits.NothingToThrottle:
        with pytest.raises(limits.NothingToThrottle):
            lim.throttle(model, percent)
        return "nothing to throttle"
    assert lim.throttle(model, percent) == (None if want is None else _approx(want))
    return "throttled by rate" if want else "throttle"
