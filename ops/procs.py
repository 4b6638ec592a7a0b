"""Start and stop the farm's background processes (simulator, workers, Flower) by name.

    python ops/procs.py start NAME [--ready worker|port:N] -- COMMAND ...
    python ops/procs.py stop [NAME ...]              # all when no name is given
    python ops/procs.py status

Logs and pid files live in $FARM_DATA_DIR/run (FARM_DATA_DIR defaults to the farm's per-user
folder, see farm.settings). With --ready, start waits until the process is ready (a Celery
worker says so in its log; a server listens on 127.0.0.1:N) and exits 1 with the reason
(its log's tail) when it dies first or is not ready in time: "started" means running.
Stopping sends SIGTERM to the process group and waits, then SIGKILL.

The demo and the benchmarks use `spawn`, `wait_ready` and `stop_all` for the children they
start and stop themselves, `open_files_at_least` before children that hold thousands of
connections, and `in_turn` for the order of a round's runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def in_turn(variants: Sequence[T], round_no: int) -> list[T]:
    """The order of round ``round_no``'s runs (0 first): ``variants`` rotated by it, so each
    takes each place in turn. Where a run goes in its round changes what it measures on this
    machine (the run before it leaves work behind: Postgres's autovacuum and checkpoints after
    the farm's writes, the servers' memory): at C=1000 the same farm code measured about 12 %
    fewer jobs/s and 0.5 ms more CPU per job second in its round than first (2026-12-04)."""
    shift = round_no % len(variants) if variants else 0
    return [*variants[shift:], *variants[:shift]]


def _run_dir() -> Path:
    configured = os.environ.get("FARM_DATA_DIR")
    if configured:
        return Path(configured) / "run"
    from farm.settings import default_data_dir

    return default_data_dir() / "run"


RUN = _run_dir()
READY_TIMEOUT_S = 90.0


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


class NotStarted(Exception):
    """The process died before it was ready, or was not ready in time (message: why)."""


def start(name: str, argv: list[str], ready: str | None = None) -> int:
    """Start NAME in the background; with ``ready`` ("worker" or "port:N"), only return once
    it is ready: NotStarted, with its log's tail, if it dies first or takes too long."""
    RUN.mkdir(parents=True, exist_ok=True)
    existing = _pid(name)
    if existing:
        print(f"{name}: already running (pid {existing})")
        return existing
    log_path = RUN / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    log = open(log_path, "ab")  # noqa: SIM115  handed to the child
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    if ready is not None:
        try:
            _wait_until_ready(proc, ready, log_path, offset)
        except NotStarted:
            stop(name, quiet=True)
            raise
    print(f"{name}: started (pid {proc.pid}, log {log_path})")
    return proc.pid


def _wait_until_ready(proc: subprocess.Popen[bytes], ready: str, log: Path, offset: int
                      ) -> None:
    from farm.services import wait_port

    def tail() -> str:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace").strip()
        return "\n".join(text.splitlines()[-15:]) or "(it wrote nothing)"

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NotStarted(f"exited with status {proc.returncode} before it was ready:\n"
                             f"{tail()}")
        if ready == "worker":
            with open(log, "rb") as f:
                f.seek(offset)
                if b" ready." in f.read():
                    return
        elif wait_port(int(ready.removeprefix("port:")), timeout=0.2):
            # the port may be another process's: ours must still be alive a moment later
            time.sleep(0.5)
            if proc.poll() is None:
                return
        time.sleep(0.2)
    raise NotStarted(f"not ready after {READY_TIMEOUT_S:.0f}s:\n{tail()}")


def stop(name: str, grace: float | None = None, *, quiet: bool = False) -> None:
    """SIGTERM to the process group; SIGKILL after ``grace`` (default: a worker's shutdown
    grace, FARM_SHUTDOWN_GRACE_S, plus 15 s: running jobs get their time to end)."""
    if grace is None:
        grace = float(os.environ.get("FARM_SHUTDOWN_GRACE_S", "90")) + 15
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
    if not quiet:
        print(f"{name}: stopped")


def spawn(argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A child in a process group of its own (stopping the group stops its children too),
    its output in `log` (discarded without one)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  handed to the child
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def open_files_at_least(needed: int) -> int:
    """Raise this process's soft limit of open files towards ``needed`` (never above the hard
    limit; children started afterwards inherit it) and return the soft limit now in force
    (sys.maxsize: none). A worker of 1000 threads may hold 1000 HTTP, 1000 Redis and a few
    dozen Postgres connections: more than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if unlimited else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def start_sim(port: int, flags: list[str], *, env: dict[str, str], log: Path | None = None,
              timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """`farm sim --port PORT FLAGS…`, returned once it listens; stopped, and SystemExit, if
    it does not within ``timeout``."""
    from farm.services import wait_port

    sim = spawn([sys.executable, "-m", "farm.cli", "sim", "--port", str(port), *flags],
                env=env, log=log)
    if not wait_port(port, timeout=timeout):
        stop_all([sim], grace=5)
        raise SystemExit("the simulator did not start" + (f": see {log}" if log else ""))
    return sim


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Until the Celery worker writing `log` says it is ready; SystemExit (with its log's
    tail) if it exits first or takes longer than `timeout`."""
    from farm.worker.command import WorkerNotReady
    from farm.worker.command import wait_ready as ready

    try:
        ready(proc, log, timeout)
    except WorkerNotReady as exc:
        raise SystemExit(f"a worker did not start: {exc}") from None


def start_ready(argvs: list[list[str]], logs: list[Path], *, env: dict[str, str],
                cwd: Path | None = None, timeout: float = 90.0) -> list[subprocess.Popen[bytes]]:
    """Celery workers started together (``argvs[i]`` logging to ``logs[i]``), returned once
    every one is ready; all stopped if one is not (SystemExit, as ``wait_ready``)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for argv, log in zip(argvs, logs, strict=True):
            started.append(spawn(argv, env=env, log=log, cwd=cwd))
        for proc, log in zip(started, logs, strict=True):
            wait_ready(proc, log, timeout=timeout)
    except BaseException:
        stop_all(started)
        raise
    return started


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
        name, rest = args[1] if len(args) > 1 else "", args[2:]
        ready = None
        if rest[:1] == ["--ready"] and len(rest) > 1:
            ready, rest = rest[1], rest[2:]
        if not name or rest[:1] != ["--"] or len(rest) < 2 or (
                ready is not None and ready != "worker"
                and not (ready.startswith("port:") and ready[5:].isdigit())):
            print("usage: procs.py start NAME [--ready worker|port:N] -- COMMAND ...")
            return 2
        try:
            start(name, rest[1:], ready)
        except NotStarted as exc:
            print(f"{name}: did not start: {exc}", file=sys.stderr)
            return 1
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
