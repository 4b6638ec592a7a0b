"""`make bench-cost` (ops/bench_cost.py) at a tiny size, so that it cannot rot: both paths
run to the end on real workers and the simulator, every job succeeds, the cost the farm
recorded is the cost the simulator billed, and each of the farm's features shows in the
figures (the baseline's show none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JOBS = 40


def test_the_cost_bench_runs_both_paths_and_its_figures_add_up(
        service_urls: tuple[str, str], broker_url: str, tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env.update({
        "FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": service_urls[1],
        "FARM_DATA_DIR": str(tmp_path), "FARM_BENCH_COST_BROKER_URL": broker_url,
        "FARM_BENCH_COST_JOBS": str(JOBS), "FARM_BENCH_COST_RATE": "40",
        "FARM_BENCH_COST_CONCURRENCY": "8", "FARM_BENCH_COST_BATCH_S": "1",
        "FARM_BENCH_COST_FLUSH_S": "1",
        # 40 jobs write each shared context into the cache for only a few reads: the
        # 1,000-job run is held to 0.30; here the farm must only cost less
        "FARM_BENCH_COST_GOAL": "0.99", "FARM_BENCH_COST_JSON": str(figures_file),
    })
    done = subprocess.run([sys.executable, str(ROOT / "ops" / "bench_cost.py")], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["problems"] == []
    farm, baseline = figures["paths"]["farm"], figures["paths"]["baseline"]
    for path in (farm, baseline):
        assert path["jobs"] == path["ok"] == JOBS
        assert Decimal(path["recorded_usd"]) == Decimal(path["billed_usd"]) > 0
    # the baseline: every job a synchronous call of the complex model, nothing reused
    assert baseline["calls"] == {"claude-sonnet-5-5": JOBS}
    assert baseline["batch_requests"] == baseline["memo_hits"] == baseline["batched"] == 0
    assert baseline["cache_read"] == baseline["cache_write"] == 0
    assert Decimal(baseline["billed_batch_usd"]) == 0
    # the farm: the router used both models, repeats were answered from the memo, the
    # shared contexts read from the prompt cache, the jobs that could wait sent in batches
    assert set(farm["routed"]) == {"haiku-simple", "sonnet-complex"}
    assert farm["memo_hits"] > 0 and Decimal(farm["saved_usd"]) > 0
    assert farm["cache_read"] > 0
    assert farm["batched"] > 0 and farm["batch_requests"] > 0
    assert Decimal(farm["billed_batch_usd"]) > 0
    assert sum(farm["calls"].values()) + farm["batch_requests"] + farm["memo_hits"] == JOBS
    assert Decimal(farm["recorded_usd"]) < Decimal(baseline["recorded_usd"])
    assert Decimal(figures["ratio"]) == (Decimal(farm["recorded_usd"])
                                         / Decimal(baseline["recorded_usd"]))
    for group in ("sync", "batch", "memo hit"):
        assert farm["latency"][group], group
    assert len(baseline["latency"]["sync"]) == JOBS
    assert "cost ratio farm/baseline:" in done.stdout
    assert "real Message Batches take minutes" in done.stdout
