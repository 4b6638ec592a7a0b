"""The Makefile's background starters (`make sim`, `make workers`, `make flower` through
ops/procs.py): "started" means running. A process that dies at once (no API key, no Flower
credentials) makes the start fail with its reason; a healthy one is started and ready."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests_support import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
FARM = [sys.executable, "-m", "farm.cli"]


def procs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "ops" / "procs.py"), *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=150)


def starter_env(e2e_env: dict[str, str], tmp_path: Path, **drop: bool) -> dict[str, str]:
    env = {**e2e_env, "FARM_DATA_DIR": str(tmp_path)}
    return {k: v for k, v in env.items() if not drop.get(k)}


def test_a_worker_without_an_api_key_fails_to_start_and_says_why(
        e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = starter_env(e2e_env, tmp_path, ANTHROPIC_API_KEY=True)
    done = procs(env, "start", "w", "--ready", "worker", "--", *FARM, "worker",
                 "-Q", "haiku-simple")
    assert done.returncode == 1, done
    assert "did not start" in done.stderr and "ANTHROPIC_API_KEY" in done.stderr
    assert "started" not in done.stdout
    assert not (tmp_path / "run" / "w.pid").exists()


def test_flower_without_credentials_fails_to_start_and_says_why(
        e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = starter_env(e2e_env, tmp_path, FARM_FLOWER_USER=True, FARM_FLOWER_PASSWORD=True)
    port = free_port()
    done = procs(env, "start", "flower", "--ready", f"port:{port}", "--", *FARM, "flower",
                 "--port", str(port))
    assert done.returncode == 1, done
    assert "FARM_FLOWER_USER" in done.stderr


def test_healthy_processes_are_started_once_ready(e2e_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    env = starter_env(e2e_env, tmp_path)
    port = free_port()
    try:
        sim = procs(env, "start", "sim", "--ready", f"port:{port}", "--", *FARM, "sim",
                    "--port", str(port))
        assert sim.returncode == 0 and "sim: started" in sim.stdout, sim
        wait_port(port, timeout=1)  # listening at the moment "started" was said
        worker = procs(env, "start", "w", "--ready", "worker", "--", *FARM, "worker",
                       "-Q", "haiku-simple", "-c", "2")
        assert worker.returncode == 0 and "w: started" in worker.stdout, worker
        assert " ready." in (tmp_path / "run" / "w.log").read_text()
        assert "running" in procs(env, "status").stdout
    finally:
        procs(env, "stop")
    assert "running" not in procs(env, "status").stdout


def test_bad_ready_arguments_are_refused(e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = starter_env(e2e_env, tmp_path)
    done = procs(env, "start", "x", "--ready", "soon", "--", "true")
    assert done.returncode == 2 and "usage" in done.stdout
