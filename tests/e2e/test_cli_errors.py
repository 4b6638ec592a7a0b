"""Issue 9 item 9: what the `farm` command says when its surroundings fail — one line and a
non-zero exit, never a traceback; a submit cut short says exactly what it left behind."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from tests_support import free_port, fresh_database


def farm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def test_an_unreachable_database(e2e_env: dict[str, str]) -> None:
    env = {**e2e_env, "FARM_DATABASE_URL": f"postgresql://u:dbpw@127.0.0.1:{free_port()}/x"}
    line = one_line_error(farm(env, "status", str(uuid.uuid4())))
    assert "cannot reach the database" in line and "dbpw" not in line


def test_a_database_without_the_schema(e2e_env: dict[str, str],
                                      service_urls: tuple[str, str]) -> None:
    with fresh_database(service_urls[1], "farm_unmigrated") as url:
        line = one_line_error(farm({**e2e_env, "FARM_DATABASE_URL": url}, "report"))
    assert "farm migrate" in line


def test_an_unreachable_broker_says_what_the_submit_left(e2e_env: dict[str, str]) -> None:
    env = {**e2e_env, "FARM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    line = one_line_error(farm(env, "submit", "--prompt", "Hello, broker?"))
    assert "cannot reach" in line or "submit cut short" in line
    left = line.rsplit("recorded as failed, not run: ", 1)[-1].split(", ")
    dsn = e2e_env["FARM_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select id::text, status from jobs where id = any(%s::uuid[])",
                            (left,)).fetchall()
    assert rows and {status for _, status in rows} == {"failed"}  # exactly what it said


def test_a_missing_file_and_a_busy_port(e2e_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert str(missing) in one_line_error(farm(e2e_env, "submit", "--file", str(missing)))
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(farm(e2e_env, "sim", "--port", str(port)))
    assert "address already in use" in line and "--port" in line


def test_bad_worker_slots_are_named_before_the_worker_starts(e2e_env: dict[str, str]) -> None:
    queues = ('[{"name": "a", "model": "claude-haiku-4-5", "complexity": "simple", '
              '"slots": "fixed"}, {"name": "b", "model": "claude-sonnet-5-5", '
              '"complexity": "complex", "slots": {"max": 30}}]')
    line = one_line_error(farm({**e2e_env, "FARM_QUEUES": queues}, "worker", "-Q", "a,b"))
    assert "queues a, b have different slot policies" in line
    done = farm({**e2e_env, "FARM_SLOTS": '{"min": 50, "max": 20}'}, "worker")
    assert done.returncode != 0 and "min (50) must not exceed max (20)" in done.stderr
    assert "Traceback" not in done.stderr
