"""`make demo`: the whole farm, end to end, on the embedded services and the SIMULATOR.

Starts the embedded Valkey + PostgreSQL, migrates, starts the simulated Claude API, one
worker per queue (each serving Prometheus metrics: all are given one base port and each
takes the first free one from it; their pool heartbeats say which, and the demo prints
them) and Flower; sets a hard daily budget for one tenant ("billing": what it spent today
plus $0.05, so part of its jobs wait for it); submits 300 mixed jobs from Python; waits with
a progress bar for the others, shows the budget holding billing's jobs back, raises it (the
waiting jobs run at once); prints the budgets and the cost report by tenant, writes the HTML
report; stops everything it started.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import procs  # ops/, this script's directory
import redis

from farm import services
from farm.client import Farm
from farm.costs import reports
from farm.costs.controls import make
from farm.costs.money import usd
from farm.observe import heartbeat
from farm.services import resolve_urls
from farm.settings import Settings
from farm.store.migrate import upgrade

JOBS = int(os.environ.get("FARM_DEMO_JOBS", "300"))
CAPPED = "billing"  # the tenant the demo's budget holds back
METRICS_PORT = 9464  # the workers' base metrics port unless FARM_METRICS_PORT says otherwise
SIMPLE = [
    "Translate 'good morning' into French.",
    "What is the capital of Australia?",
    "Classify the sentiment of: 'The delivery was late again.'",
    "Extract the email address from: contact bob@example.com for details.",
    "Give a one-line definition of photosynthesis.",
    "Is 97 a prime number?",
]
COMPLEX = [
    "This worker deadlocks under load about once a day; find the cause and fix it:\n"
    "```python\nlock_a, lock_b = threading.Lock(), threading.Lock()\ndef transfer(a, b):\n"
    "    with lock_a:\n        with lock_b:\n            a.balance -= 1; b.balance += 1\n"
    "def audit(a, b):\n    with lock_b:\n        with lock_a:\n"
    "            return a.balance + b.balance\n```",
    "Design the architecture of a multi-region event-sourced billing system; analyze the "
    "trade-offs of each storage option and outline a migration plan.",
    "Prove that there are infinitely many primes, then generalise the argument to primes of "
    "the form 4k+3.",
    "Refactor this module for testability and explain the design decisions:\n```python\n"
    "import requests\ndef fetch():\n    return requests.get('http://x').json()\n```",
    "Write a detailed 1500-word report comparing three approaches to rate limiting in "
    "distributed systems.",
]


def _wait_port(port: int, what: str) -> None:
    if not services.wait_port(port, timeout=30):
        raise SystemExit(f"demo: {what} did not come up on port {port}")


_last = [-1]


def _bar(done: int, total: int, started: float) -> None:
    if done == _last[0]:
        return
    _last[0] = done
    width = 40
    filled = width * done // max(1, total)
    rate = done / max(1e-9, time.monotonic() - started)
    sys.stdout.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"{rate:5.1f} jobs/s")
    sys.stdout.flush()


def _metrics_urls(settings: Settings, workers: dict[int, str]) -> dict[str, str]:
    """worker name -> its /metrics URL, read from the workers' pool heartbeats (by pid)."""
    client = redis.Redis.from_url(resolve_urls(settings).broker_url)
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 60
        while len(found) < len(workers) and time.monotonic() < deadline:
            for key in client.scan_iter(f"{heartbeat.PREFIX}*"):
                pid = int(key.decode().rsplit(":", 1)[1])
                if pid in workers:
                    _, port = heartbeat.parse(client.hgetall(key))
                    if port is not None:
                        found[workers[pid]] = f"http://127.0.0.1:{port}/metrics"
            time.sleep(0.2)
    finally:
        client.close()
    return found


def _held_back(farm: Farm, ids: list[object], budget_id: str, timeout: float = 60.0) -> list:
    """The capped tenant's jobs once each has run or waits for its budget (not on its way)."""
    deadline = time.monotonic() + timeout
    while True:
        views = farm.statuses(ids)  # type: ignore[arg-type]
        waiting = [v for v in views if v.status.value == "queued" and (v.wait_reason or "")
                   .startswith(f"budget {budget_id}:")]
        if all(v.done for v in views if v not in waiting) or time.monotonic() > deadline:
            return waiting
        time.sleep(0.5)


def _print_budgets(farm: Farm) -> None:
    for v in farm.budgets.list():
        print(f"  {v.budget.id}: {v.period} spent {usd(v.spent_usd)}, reserved "
              f"{usd(v.reserved_usd)}, remaining {usd(v.remaining_usd)} of "
              f"{usd(v.budget.limit_usd)}")


def main() -> int:
    base = Settings()
    data_dir = base.data_dir
    embedded = base.broker_url is None or base.database_url is None
    was_running = embedded and all(services.status(data_dir).values())
    if embedded:
        print("starting the embedded Valkey and PostgreSQL …" if not was_running
              else "reusing the running embedded Valkey and PostgreSQL")
        services.up(data_dir)
    sim_port = services.free_port()
    flower_port = services.free_port()
    password = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(data_dir),
        # the demo runs on the simulator, on purpose: never a real key, never the real API
        "ANTHROPIC_API_KEY": "sim-demo-key",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "FARM_FLOWER_USER": "demo",
        "FARM_FLOWER_PASSWORD": password,
        # every worker's /metrics from this base port on (each takes the first free one)
        "FARM_METRICS_PORT": os.environ.get("FARM_METRICS_PORT") or str(METRICS_PORT),
    }
    settings = Settings(_env_file=None, anthropic_api_key="sim-demo-key",
                        anthropic_base_url=env["ANTHROPIC_BASE_URL"])
    upgrade(settings)
    log_dir = data_dir / "run"
    log_dir.mkdir(parents=True, exist_ok=True)
    farm_cmd = [sys.executable, "-m", "farm.cli"]
    children: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: list[str]) -> None:
        children.append(procs.spawn(argv, env=env, log=log_dir / f"demo-{name}.log"))

    try:
        spawn("sim", [*farm_cmd, "sim", "--port", str(sim_port)])
        _wait_port(sim_port, "the simulator")
        workers: dict[int, str] = {}
        for queue in settings.queue_names:
            spawn(f"worker-{queue}", [*farm_cmd, "worker", "-Q", queue, "-l", "WARNING"])
            workers[children[-1].pid] = queue
        spawn("flower", [*farm_cmd, "flower", "--port", str(flower_port)])
        _wait_port(flower_port, "Flower")
        print(f"simulated Claude API on 127.0.0.1:{sim_port} — this demo does NOT call the "
              "real API")
        print(f"Flower: http://127.0.0.1:{flower_port}  (user demo, password {password})")
        for queue, url in sorted(_metrics_urls(settings, workers).items()):
            print(f"metrics of the {queue} worker (while the demo runs): {url}")

        rng = random.Random(7)
        jobs = []
        for i in range(JOBS):
            complex_job = rng.random() < 0.35
            prompt = rng.choice(COMPLEX if complex_job else SIMPLE)
            jobs.append({
                "prompt": f"{prompt}\n(request {i})",
                "max_tokens": rng.choice([1024, 2048]) if complex_job else 256,
                "priority": rng.choice(["high", "normal", "normal", "low"]),
                "tenant": rng.choice(["search", "support", "billing"]),
            })
        with Farm(settings) as farm:
            since = datetime.now(UTC)
            # today's spend of the tenant so far (earlier demos), read as the budget reads it
            today = farm.budgets.view(make("tenant", CAPPED, usd=1)).spent_usd
            budget, _ = farm.budgets.set(tenant=CAPPED, usd=today + Decimal("0.05"))
            print(f"budget {budget.id}: {budget.describe()} (today's spend so far "
                  f"{usd(today)} + $0.05)")
            started = time.monotonic()
            ids = farm.submit_many(jobs)
            print(f"submitted {len(ids)} jobs in {time.monotonic() - started:.2f}s; waiting …")
            capped = {i for i, job in zip(ids, jobs, strict=True) if job["tenant"] == CAPPED}
            others = [i for i in ids if i not in capped]
            farm.wait(others, timeout=170, poll_s=0.5,
                      on_progress=lambda d, t: _bar(d, t, started))
            print()
            held = _held_back(farm, sorted(capped), budget.id)
            print(f"{len(others)} jobs of the other tenants finished; {CAPPED}: "
                  f"{len(capped) - len(held)} ran, {len(held)} wait for its budget")
            if held:
                print(f"  e.g. job {held[0].id}: {held[0].wait_reason}")
            _print_budgets(farm)
            _, woken = farm.budgets.set(tenant=CAPPED, usd=today + Decimal(100))
            print(f"raised {budget.id} to {usd(today + Decimal(100))}: {woken} waiting job(s) "
                  "sent back to the workers now")
            views = farm.wait(ids, timeout=120, poll_s=0.5)
            elapsed = time.monotonic() - started
            by_status: dict[str, int] = {}
            for view in views:
                by_status[view.status.value] = by_status.get(view.status.value, 0) + 1
            print(f"all {len(views)} jobs finished in {elapsed:.1f}s: {by_status}")
            _print_budgets(farm)
            print()
            print(reports.render(farm.report(since=since)))
            print()
            rows = farm.report(since=since, by="tenant")
            print(reports.render_grouped(rows, ("tenant",), farm.report(since=since, by=())[0]))
            page = farm.report_html(log_dir / "report.html", since=since)
            print(f"\nthe HTML report (charts, self-contained): {page}")
        print("\n(ran on the simulated Claude API; costs are what the real API would bill for "
              "the same token counts)")
        return 0 if by_status.get("succeeded") == len(views) else 1
    finally:
        procs.stop_all(children, grace=20)
        stopped = "the simulator, workers and Flower"
        if embedded and not was_running:
            services.down(data_dir)
            stopped += ", and the embedded services"
        print(f"stopped {stopped}")


if __name__ == "__main__":
    sys.exit(main())
