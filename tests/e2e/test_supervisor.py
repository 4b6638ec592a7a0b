"""The supervisor (`farm supervise`, `make workers`) over real processes: a worker killed
by SIGKILL is replaced by a new one that gets ready and runs a job, one that drains past
FARM_WORKER_MAX_JOBS is replaced at once; SIGTERM stops the workers (warm shutdown) and the
supervisor exits 0 within its bound; over plain children: a drained one is
replaced at once, a crash loop backs off, nothing restarts once the stop began, a child
that ignores SIGTERM is SIGKILLed after the bound, a worker that cannot start fails
`--strict-start` (and `procs.py start --ready worker`, as `make workers` runs it, says so),
and no child outlives a supervisor killed by SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm.client import Farm
from farm.jobs import JobStatus
from farm.observe import heartbeat
from tests_e2e import log_text, wait_for_text, wait_until

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"supervisor: started worker (\S+) \(pid (\d+),")

# a supervisor of plain Python children (no Celery), with a quick restart policy
SUPERVISOR = """
import json, logging, sys
from pathlib import Path
from farm.pool.restarts import RestartPolicy
from farm.pool.supervisor import Supervisor, WorkerSpec
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
log_dir, bound, strict, children = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1", \
    json.loads(sys.argv[4])
specs = [WorkerSpec(name, (sys.executable, "-c", code), log_dir / f"{name}.log")
         for name, code in children.items()]
policy = RestartPolicy(healthy_s=30, quick_s=0.5, backoff_s=0.2, max_backoff_s=0.8)
sys.exit(Supervisor(specs, stop_bound_s=bound, strict_start=strict, policy=policy).run())
"""
# ready, then runs until SIGTERM, and exits 0 on it
STEADY = ("import signal, sys, time\n"
          "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
          "print('steady ready.', flush=True)\n"
          "while True: time.sleep(1)\n")
DRAINER = "import time; print('drainer ready.', flush=True); time.sleep(1)"  # exits 0
CRASHER = "import sys; print('cannot start: no such thing', flush=True); sys.exit(3)"
STUBBORN = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('stubborn ready.', flush=True)\n"
            "while True: time.sleep(1)\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet by whoever adopted it) is gone as far as we care
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def started(log: Path, name: str) -> list[int]:
    """The pids the supervisor started for worker ``name``, in order."""
    return [int(m[2]) for m in STARTED.finditer(log_text(log)) if m[1] == name]


def run_supervisor(tmp_path: Path, children: dict[str, str], *, bound: float = 20.0,
                   strict: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, str(tmp_path), str(bound), "1" if strict else "0",
             json.dumps(children)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, log


@pytest.fixture
def reaped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes to kill on the way out if a test left them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_drains_restart_at_once_crash_loops_back_off_and_a_stop_restarts_nothing(
        tmp_path: Path, reaped: list[subprocess.Popen[bytes]]) -> None:
    proc, log = run_supervisor(tmp_path, {"steady": STEADY, "drainer": DRAINER,
                                          "crasher": CRASHER})
    reaped.append(proc)
    wait_for_text([log], "worker steady is up", timeout=30)
    wait_for_text([log], "(crashed, 4th time in a row); restarting in 0.8s", timeout=30)
    text = log_text(log)
    for n, delay in (("1st", "0.2"), ("2nd", "0.4"), ("3rd", "0.8"), ("4th", "0.8")):
        assert re.search(rf"worker crasher exited with status 3 after \ds \(crashed, {n} time "
                         rf"in a row\); restarting in {delay}s\n", text), n
    # a crash before it was ever ready: its log's tail says why
    assert re.search(r"worker crasher exited with status 3 after \ds before it was ready", text)
    assert "  | cannot start: no such thing" in text
    wait_until(lambda: None if len(started(log, "drainer")) >= 3 else "drainer not replaced",
               30)
    assert re.search(r"worker drainer exited with status 0 after \ds \(drained\); "
                     r"restarting now\n", log_text(log))
    steady = started(log, "steady")
    assert len(steady) == 1 and alive(steady[0])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    text = log_text(log)
    after = text[text.index("SIGTERM received: stopping"):]
    assert "supervisor: started worker" not in after  # nothing restarted once stopping
    assert "worker steady exited with status 0" in after and "(stopping: not restarted)" in after
    assert "every worker stopped; exiting with status 0" in after
    assert not any(alive(pid) for name in ("steady", "drainer", "crasher")
                   for pid in started(log, name))


def test_a_child_that_ignores_sigterm_is_killed_after_the_bound(
        tmp_path: Path, reaped: list[subprocess.Popen[bytes]]) -> None:
    proc, log = run_supervisor(tmp_path, {"stubborn": STUBBORN, "steady": STEADY}, bound=2)
    reaped.append(proc)
    wait_for_text([log], "all 2 workers are ready.", timeout=30)
    [stubborn] = started(log, "stubborn")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 1
    assert 1.5 < time.monotonic() - began < 10
    assert not alive(stubborn)
    text = log_text(log)
    assert "worker steady exited with status 0" in text
    assert f"worker stubborn (pid {stubborn}) still running 2s after the stop: SIGKILL" in text


def test_strict_start_stops_all_when_a_worker_cannot_start(
        tmp_path: Path, reaped: list[subprocess.Popen[bytes]]) -> None:
    proc, log = run_supervisor(tmp_path, {"steady": STEADY, "crasher": CRASHER},
                               strict=True)
    reaped.append(proc)
    assert proc.wait(30) == 1
    text = log_text(log)
    assert "worker crasher did not start: stopping" in text
    assert "  | cannot start: no such thing" in text
    assert "restarting" not in text
    assert not any(alive(pid) for pid in started(log, "steady"))


def test_no_child_outlives_a_supervisor_killed_by_sigkill(
        tmp_path: Path, reaped: list[subprocess.Popen[bytes]]) -> None:
    proc, log = run_supervisor(tmp_path, {"steady": STEADY})
    reaped.append(proc)
    wait_for_text([log], "the worker is ready.", timeout=30)
    [child] = started(log, "steady")
    proc.kill()  # the child has no one to restart it now: it gets SIGTERM (Linux)
    proc.wait(10)
    wait_until(lambda: None if not alive(child) else f"child {child} still running", 20)


# --- real workers ----------------------------------------------------------------------

def test_a_killed_worker_is_replaced_runs_jobs_and_sigterm_stops_all(
        e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
        reaped: list[subprocess.Popen[bytes]]) -> None:
    grace = 10
    # each worker drains after one job and exits 0, for the supervisor to replace it
    env = {**e2e_env, "FARM_SHUTDOWN_GRACE_S": str(grace), "FARM_WORKER_MAX_JOBS": "1"}
    log = tmp_path / "workers.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "supervise", "--worker", "haiku-simple -c 2",
             "--log-dir", str(tmp_path)], env=env, stdout=out, stderr=subprocess.STDOUT)
    reaped.append(proc)
    client = redis.Redis.from_url(env["FARM_BROKER_URL"])
    try:
        wait_for_text([log], "the worker is ready.", timeout=90)
        [first] = started(log, "haiku-simple")
        first_key = heartbeat.key(pid=first)
        wait_until(lambda: None if client.exists(first_key) else "no heartbeat", 30)

        os.kill(first, signal.SIGKILL)
        wait_until(lambda: None if len(started(log, "haiku-simple")) == 2 else "no restart", 30)
        second = started(log, "haiku-simple")[1]
        assert second != first and alive(second)
        wait_for_text([log], f"worker haiku-simple is up (pid {second})", timeout=90)
        assert ("worker haiku-simple was killed by SIGKILL after" in log_text(log)
                and "(crashed, 1st time in a row); restarting in 1s" in log_text(log))
        second_key = heartbeat.key(pid=second)
        wait_until(lambda: None if client.exists(second_key) else "no heartbeat", 30)

        worker_log = tmp_path / "worker-haiku-simple.log"
        offset = len(log_text(worker_log))
        job = farm.submit({"prompt": "supervised: the capital of Chile?",
                           "complexity": "simple"})
        [view] = farm.wait([job], timeout=60)
        assert view.status is JobStatus.SUCCEEDED
        assert f"[{job}] succeeded" in log_text(worker_log)[offset:]  # the new worker ran it

        # past FARM_WORKER_MAX_JOBS it drained and exited 0: replaced at once
        wait_until(lambda: None if len(started(log, "haiku-simple")) == 3 else "not replaced",
                   60)
        third = started(log, "haiku-simple")[2]
        assert re.search(r"worker haiku-simple exited with status 0 after \d+s \(drained\); "
                         r"restarting now\n", log_text(log))
        assert not alive(second)
        wait_for_text([log], f"worker haiku-simple is up (pid {third})", timeout=90)

        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(grace + 20) == 0
        assert time.monotonic() - began < grace + 15  # within the supervisor's bound
        assert not alive(third) and not client.exists(heartbeat.key(pid=third))
        text = log_text(log)
        assert "SIGTERM received: stopping 1 worker(s)" in text
        assert "worker haiku-simple exited with status 0" in text.split("SIGTERM received")[1]
        assert len(started(log, "haiku-simple")) == 3
    finally:
        client.close()


def test_make_workers_start_is_ready_only_when_every_worker_is(
        e2e_env: dict[str, str], tmp_path: Path) -> None:
    """What `make workers` runs: `procs.py start workers --ready worker -- farm supervise
    --strict-start --worker ...`; "started" once every worker is ready, stop stops all."""
    env = {**e2e_env, "FARM_DATA_DIR": str(tmp_path)}
    procs = [sys.executable, str(ROOT / "ops" / "procs.py")]
    command = [sys.executable, "-m", "farm.cli", "supervise", "--strict-start",
               "--worker", "sonnet-complex -c 2", "--worker", "farm-intake -c 2"]
    run = tmp_path / "run"
    pids: list[int] = []
    try:
        done = subprocess.run([*procs, "start", "workers", "--ready", "worker", "--", *command],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0 and "workers: started" in done.stdout, done
        for name in ("sonnet-complex", "farm-intake"):  # each ready before "started"
            assert " ready." in (run / f"worker-{name}.log").read_text()
        pids.extend(pid for name in ("sonnet-complex", "farm-intake")
                    for pid in started(run / "workers.log", name))
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        subprocess.run([*procs, "stop", "workers"], env=env, cwd=ROOT, timeout=60)
    assert not any(alive(pid) for pid in pids)

    # a worker that cannot start: the start fails and says why
    bad = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run([*procs, "start", "workers", "--ready", "worker", "--", *command],
                          env=bad, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 1 and "ANTHROPIC_API_KEY" in done.stderr, done
    assert not (run / "workers.pid").exists()
