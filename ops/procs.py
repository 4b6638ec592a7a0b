"""Start and stop the farm's background processes (simulator, workers, Flower) by name.

    python ops/procs.py start NAME -- COMMAND ...   # log: .farm/run/NAME.log
    python ops/procs.py stop [NAME ...]              # all when no name is given
    python ops/procs.py status

Pid files live in $FARM_DATA_DIR/run (default .farm/run). Stopping sends SIGTERM to the
process group and waits, then SIGKILL.

The demo and the benchmarks use `spawn`, `wait_ready` and `stop_all` for the children they
start and stop themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN = Path(os.environ.get("FARM_DATA_DIR", ".farm")) / "run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(name: str) -> int | None:
    try:
        pid = int((RUN / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def start(name: str, argv: list[str]) -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    existing = _pid(name)
    if existing:
        print(f"{name}: already running (pid {existing})")
        return existing
    log = open(RUN / f"{name}.log", "ab")  # noqa: SIM115  handed to the child
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    print(f"{name}: started (pid {proc.pid}, log {RUN / f'{name}.log'})")
    return proc.pid


def stop(name: str, grace: float = 20.0) -> None:
    pid = _pid(name)
    (RUN / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    print(f"{name}: stopped")


def spawn(argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A child in a process group of its own (stopping the group stops its children too),
    its output in `log` (discarded without one)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  handed to the child
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Until the Celery worker writing `log` says it is ready; SystemExit (with its log's
    tail) if it exits first or takes longer than `timeout`."""
    from farm.worker.command import WorkerNotReady
    from farm.worker.command import wait_ready as ready

    try:
        ready(proc, log, timeout)
    except WorkerNotReady as exc:
        raise SystemExit(f"a worker did not start: {exc}") from None


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 30.0) -> None:
    """SIGTERM every process group at once, wait up to `grace`, SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def names() -> list[str]:
    return sorted(p.stem for p in RUN.glob("*.pid")) if RUN.exists() else []


def main(args: list[str]) -> int:
    if not args or args[0] not in ("start", "stop", "status"):
        print(__doc__)
        return 2
    if args[0] == "start":
        if len(args) < 4 or args[2] != "--":
            print("usage: procs.py start NAME -- COMMAND ...")
            return 2
        start(args[1], args[3:])
    elif args[0] == "stop":
        for name in args[1:] or names():
            stop(name)
    else:
        for name in names():
            pid = _pid(name)
            print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
