"""The `farm` command as an operator uses it, against real workers."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text

from farm.client import Farm
from farm.store.migrate import alembic_config
from tests_support import fresh_database


def farm_cli(env: dict[str, str], *args: str, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_submit_wait_status_report(workers: list[Path], e2e_env: dict[str, str]) -> None:
    done = farm_cli(e2e_env, "submit", "--prompt", "What is the capital of Peru?",
                    "--tenant", "cli", "--priority", "high", "--json")
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_ids"][0]
    waited = farm_cli(e2e_env, "wait", job_id, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    view = json.loads(waited.stdout)[0]
    assert view["status"] == "succeeded" and view["queue"] == "haiku-simple"
    assert view["priority"] == "high" and view["tenant"] == "cli"
    status = farm_cli(e2e_env, "status", job_id)
    assert "succeeded" in status.stdout and "claude-haiku-4-5" in status.stdout
    report = farm_cli(e2e_env, "report", "--json")
    rows = json.loads(report.stdout)
    assert any(r["queue"] == "haiku-simple" and r["succeeded"] >= 1 for r in rows)
    table = farm_cli(e2e_env, "report")
    assert "haiku-simple" in table.stdout and "cost USD" in table.stdout


def test_submit_file_jsonl(workers: list[Path], e2e_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        json.dumps({"prompt": "Translate 'cat' into Spanish.", "metadata": {"k": "v"}}) + "\n\n"
        + json.dumps({"prompt": "Prove there are infinitely many primes, step by step.",
                      "complexity": "complex", "max_tokens": 2000}) + "\n"
    )
    done = farm_cli(e2e_env, "submit", "--file", str(path))
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 2
    waited = farm_cli(e2e_env, "wait", *ids, "--timeout", "60", "--json")
    views = json.loads(waited.stdout)
    assert [v["queue"] for v in views] == ["haiku-simple", "sonnet-complex"]


def test_bad_input_is_named_and_nothing_is_enqueued(e2e_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    empty = farm_cli(e2e_env, "submit", "--prompt", "  ")
    assert empty.returncode != 0 and "prompt" in empty.stderr
    big = farm_cli(e2e_env, "submit", "--prompt", "hi", "--max-tokens", "0")
    assert big.returncode != 0 and "max_tokens" in big.stderr
    model = farm_cli(e2e_env, "submit", "--prompt", "hi", "--model", "gpt-4")
    assert model.returncode != 0 and "gpt-4" in model.stderr
    # one line, the field named once
    assert model.stderr.splitlines() == [
        "Error: invalid job(s), nothing was enqueued: model: unknown model 'gpt-4'; known: "
        "claude-haiku-4-5, claude-sonnet-5-5"]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "x", "priority": "urgent"}\nnot json\n')
    bad = farm_cli(e2e_env, "submit", "--file", str(path))
    assert bad.returncode != 0 and "bad.jsonl:3" in bad.stderr
    path.write_text('{"prompt": "fine"}\n\n{"prompt": "x", "priority": "urgent"}\n')
    bad = farm_cli(e2e_env, "submit", "--file", str(path))
    assert bad.returncode != 0
    # each bad job named by its line in the file
    assert "bad.jsonl:3: priority: " in bad.stderr and "nothing was enqueued" in bad.stderr
    unknown = farm_cli(e2e_env, "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode != 0 and "no job" in unknown.stderr
    garbage = farm_cli(e2e_env, "status", "not-a-uuid")
    assert garbage.returncode != 0 and "not-a-uuid" in garbage.stderr


def test_wait_exit_code_reports_failures(workers: list[Path], e2e_env: dict[str, str]) -> None:
    done = farm_cli(e2e_env, "submit", "--prompt", "[[sim:status=400]] no")
    job_id = done.stdout.strip()
    waited = farm_cli(e2e_env, "wait", job_id, "--timeout", "60")
    assert waited.returncode == 1
    assert "failed" in waited.stdout


def test_report_adds_up_and_money_reads_as_dollars(workers: list[Path],
                                                  e2e_env: dict[str, str]) -> None:
    failed = farm_cli(e2e_env, "submit", "--prompt", "[[sim:status=400]] free").stdout.strip()
    slow = farm_cli(e2e_env, "submit", "--prompt", "[[sim:latency=10]] cancel me").stdout.strip()
    assert farm_cli(e2e_env, "cancel", slow).returncode == 0
    waited = farm_cli(e2e_env, "wait", failed, slow, "--timeout", "60")
    assert waited.returncode == 1  # one failed, one cancelled
    # a call that cost nothing reads back from Postgres as Decimal('0E-10')
    assert f"{failed} failed claude-haiku-4-5 cost=$0.00 " in waited.stdout
    assert "E-" not in waited.stdout
    status = farm_cli(e2e_env, "status", failed)
    shown = [line.split() for line in status.stdout.splitlines()]
    assert ["cost_usd", "$0.00"] in shown
    as_json = json.loads(farm_cli(e2e_env, "status", failed, "--json").stdout)
    assert as_json["cost_usd"] == "0.0000000000"  # exact, fixed point
    rows = json.loads(farm_cli(e2e_env, "report", "--json").stdout)
    assert sum(r["cancelled"] for r in rows) >= 1
    for r in rows:
        assert r["succeeded"] + r["failed"] + r["cancelled"] + r["pending"] == r["jobs"], r
        assert r["cost_usd"] is None or "E" not in r["cost_usd"]
    table = farm_cli(e2e_env, "report").stdout.splitlines()
    assert table[0].split()[:7] == ["queue", "model", "jobs", "ok", "fail", "cancel", "pend"]
    body = [line for line in table[2:] if line and not line.startswith(("-", "WARNING"))]
    for line in body:  # the rows and the total line
        words = line.split()
        jobs, ok, fail, cancelled, pending = map(int, words[1:6] if words[0] == "total"
                                                 else words[2:7])
        assert ok + fail + cancelled + pending == jobs, line
    assert all("$" in line and "E-" not in line for line in body)


def _submit(env: dict[str, str], prompt: str) -> str:
    done = farm_cli(env, "submit", "--prompt", prompt)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_wait_on_an_id_with_no_job_says_so_at_once(e2e_env: dict[str, str]) -> None:
    nobody = str(uuid.uuid4())
    waited = farm_cli(e2e_env, "wait", nobody, "--timeout", "30")
    assert waited.returncode == 1
    assert waited.stderr.splitlines() == [f"Error: no such job: {nobody}"]


def test_a_wait_that_times_out_shows_progress_and_lists_what_is_left(
        workers: list[Path], e2e_env: dict[str, str]) -> None:
    quick = _submit(e2e_env, "Name a colour.")
    stuck = _submit(e2e_env, "[[sim:latency=15]] Name a tree.")
    try:
        waited = farm_cli(e2e_env, "wait", quick, stuck, "--timeout", "4", "--json")
    finally:
        farm_cli(e2e_env, "cancel", stuck)
    assert waited.returncode == 3, waited.stderr
    assert waited.stdout == ""  # nothing but JSON ever goes there
    lines = waited.stderr.splitlines()
    # the wait lasted its 4 s: past the 2 s of quiet, progress lines
    assert any(re.fullmatch(r"[0-2]/2 finished \(\d+s\)", line) for line in lines), lines
    head = next(i for i, line in enumerate(lines) if line.startswith("Error:"))
    assert re.fullmatch(r"Error: [12] of 2 jobs not finished in 4\.0s:", lines[head]), lines
    # then the jobs left, in the order given, with their status (the quick one may be done)
    assert re.fullmatch(rf"  {stuck} (queued|running)", lines[-1]), lines


def test_a_long_wait_prints_progress_to_stderr_not_into_json(
        workers: list[Path], e2e_env: dict[str, str]) -> None:
    # 8 s: the wait (a new process) has started well before the job ends, however slowly
    # the submits and the wait's own start-up ran on a loaded machine
    ids = [_submit(e2e_env, "Name a colour."), _submit(e2e_env, "[[sim:latency=8]] A fruit?")]
    waited = farm_cli(e2e_env, "wait", *ids, "--json")
    assert waited.returncode == 0, waited.stderr
    assert [v["id"] for v in json.loads(waited.stdout)] == ids
    # the wait lasted more than 2 s: progress was shown, the last line when all were done
    assert re.fullmatch(r"2/2 finished \(\d+s\)", waited.stderr.splitlines()[-1]), waited.stderr


def test_wait_takes_an_inline_job_no_worker_has_recorded_yet(
        workers: list[Path], e2e_env: dict[str, str], farm: Farm) -> None:
    # sent with plain send_task: no row until a worker runs it, after its countdown; its
    # message is queued or held by a worker until then
    sent = farm.app.send_task("farm.run_job", kwargs={"request": {"prompt": "Say hi."}},
                              countdown=5)
    assert farm.statuses([sent.id]) == []
    waited = farm_cli(e2e_env, "wait", sent.id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert f"{sent.id} succeeded" in waited.stdout


def test_farm_jobs_lists_newest_first_with_filters(workers: list[Path],
                                                  e2e_env: dict[str, str]) -> None:
    tenant = f"jobs-{uuid.uuid4().hex[:8]}"
    ok = _submit(e2e_env, "Name a colour.")  # another tenant's: never listed below
    bad = farm_cli(e2e_env, "submit", "--prompt", "[[sim:status=400]] no", "--tenant",
                   tenant).stdout.strip()
    deep = farm_cli(e2e_env, "submit", "--prompt", "Name a river.", "--tenant", tenant,
                    "--queue", "sonnet-complex").stdout.strip()
    assert farm_cli(e2e_env, "wait", ok, bad, deep, "--timeout", "60").returncode == 1

    def listed(*args: str) -> list[str]:
        done = farm_cli(e2e_env, "jobs", "--tenant", tenant, *args, "--json")
        assert done.returncode == 0, done.stderr
        return [v["id"] for v in json.loads(done.stdout)]

    assert listed() == [deep, bad]
    assert listed("--status", "failed") == [bad]
    assert listed("--status", "succeeded", "--status", "failed") == [deep, bad]
    assert listed("--queue", "sonnet-complex") == [deep]
    assert listed("--limit", "1") == [deep]
    assert listed("--since", "1h") == [deep, bad]
    assert listed("--since", "2999-01-01T00:00") == []
    table = farm_cli(e2e_env, "jobs", "--tenant", tenant).stdout.splitlines()
    assert table[0].split()[:4] == ["id", "created", "(UTC)", "status"]
    assert [line.split()[0] for line in table[1:3]] == [deep, bad]
    assert table[1].split()[3:5] == ["succeeded", "sonnet-complex"]
    assert table[-1] == "2 job(s)"
    wrong = farm_cli(e2e_env, "jobs", "--since", "yesterday")
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines()[-1].startswith(
        "Error: Invalid value for '--since': expected hours (6, 1.5), a duration")


def test_submit_reads_the_prompt_from_a_file_or_stdin_with_metadata_queue_and_fallback(
        e2e_env: dict[str, str], farm: Farm, tmp_path: Path) -> None:
    big = "Summarise this text.\n" + "lorem ipsum dolor " * 20_000  # 360 kB: no argv
    done = farm_cli(e2e_env, "submit", "--prompt-file", "-", "--metadata", "ticket=T-1",
                    "--metadata", "expr=a=b", "--queue", "sonnet-complex", "--allow-fallback",
                    "--json", stdin=big)
    assert done.returncode == 0, done.stderr
    from_stdin = json.loads(done.stdout)["job_ids"][0]
    path = tmp_path / "prompt.txt"
    path.write_text("Translate 'good morning' into Italian.\n", encoding="utf-8")
    from_file = farm_cli(e2e_env, "submit", "--prompt-file", str(path)).stdout.strip()
    with farm.engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id::text, request FROM jobs WHERE id = ANY(:ids)"),
                                 {"ids": [from_stdin, from_file]}).all())
    assert rows[from_stdin]["prompt"] == big
    assert rows[from_stdin]["metadata"] == {"ticket": "T-1", "expr": "a=b"}
    assert rows[from_stdin]["queue"] == "sonnet-complex"
    assert rows[from_stdin]["allow_fallback"] is True
    assert rows[from_file]["prompt"] == path.read_text(encoding="utf-8")
    assert farm.status(from_stdin).queue == "sonnet-complex"
    for job in (from_stdin, from_file):
        farm.cancel(job)
    bad = farm_cli(e2e_env, "submit", "--prompt", "hi", "--metadata", "ticket")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--metadata': expected KEY=VALUE, got 'ticket'")
    both = farm_cli(e2e_env, "submit", "--prompt", "hi", "--prompt-file", str(path))
    assert both.returncode == 2 and "exactly one of --prompt, --prompt-file or --file" in (
        both.stderr)


def test_cancel_of_a_finished_job_fails_and_says_so(workers: list[Path],
                                                   e2e_env: dict[str, str]) -> None:
    job = _submit(e2e_env, "Name a planet.")
    assert farm_cli(e2e_env, "wait", job, "--timeout", "60").returncode == 0
    done = farm_cli(e2e_env, "cancel", job)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: job {job} had already finished (succeeded): nothing to cancel"]


def test_version_comes_from_the_package(e2e_env: dict[str, str]) -> None:
    shown = farm_cli(e2e_env, "--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"farm {importlib.metadata.version('farm')}"


def test_migrate_says_from_which_revision_to_which(e2e_env: dict[str, str],
                                                  service_urls: tuple[str, str]) -> None:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    with fresh_database(service_urls[1], "farm_cli_migrate", "0003") as url:
        env = {**e2e_env, "FARM_DATABASE_URL": url}
        first = farm_cli(env, "migrate")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"upgraded the database schema: 0003 -> {head} (head)"
        again = farm_cli(env, "migrate")
        assert again.stdout.strip() == f"database schema already at head {head}: nothing to do"
    with fresh_database(service_urls[1], "farm_cli_migrate") as url:
        created = farm_cli({**e2e_env, "FARM_DATABASE_URL": url}, "migrate")
        assert created.stdout.strip() == f"created the database schema: none -> {head} (head)"


def _job_rows(farm: Farm) -> int:
    with farm.engine.connect() as conn:
        return int(conn.execute(text("select count(*) from jobs")).scalar_one())


def test_submit_dry_run_estimates_and_enqueues_nothing(e2e_env: dict[str, str], farm: Farm,
                                                      tmp_path: Path) -> None:
    before = _job_rows(farm)
    one = farm_cli(e2e_env, "submit", "--dry-run", "--json", "--prompt", "abcd" * 100,
                   "--complexity", "simple", "--max-tokens", "500")
    assert one.returncode == 0, one.stderr
    [job] = json.loads(one.stdout)["jobs"]
    assert (job["route"]["queue"], job["route"]["model"]) == ("haiku-simple",
                                                              "claude-haiku-4-5")
    # 116 input tokens at $1/M + 500 output tokens at $5/M; exact, in fixed point
    assert job["worst_usd"] == "0.002616" and job["cap_usd"] == "2.00" and job["fits"]
    assert job["expected"]["usd"] is not None and job["expected"]["basis"]
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Design a distributed rate limiter, step by step.", encoding="utf-8")
    from_file = farm_cli(e2e_env, "submit", "--dry-run", "--prompt-file", str(prompt))
    assert from_file.returncode == 0, from_file.stderr
    assert "sonnet-complex" in from_file.stdout and "claude-sonnet-5-5" in from_file.stdout
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "Translate 'cat' into Spanish."}) + "\n\n"
                    + json.dumps({"prompt": "Prove it, step by step.", "max_tokens": 2000,
                                  "complexity": "complex"}) + "\n")
    table = farm_cli(e2e_env, "submit", "--dry-run", "--file", str(path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["job", "queue", "model", "complexity", "worst", "USD"]
    assert lines[2].split()[:4] == ["line", "1", "haiku-simple", "claude-haiku-4-5"]
    assert lines[3].split()[:4] == ["line", "3", "sonnet-complex", "claude-sonnet-5-5"]
    assert lines[5].startswith("total (2 job(s))") and "$" in lines[5]
    assert lines[-1] == "nothing was enqueued (dry run)"
    assert _job_rows(farm) == before


def test_a_job_over_its_cost_cap_is_refused_naming_max_cost_usd(
        e2e_env: dict[str, str], farm: Farm, tmp_path: Path) -> None:
    before = _job_rows(farm)
    over = ("--prompt", "hi", "--complexity", "simple", "--max-tokens", "20000",
            "--max-cost-usd", "0.05")
    refused = farm_cli(e2e_env, "submit", *over)
    assert refused.returncode == 1
    figures = ("max_cost_usd: worst case $0.1000 (17 input tokens at $1.00/M + 20,000 output "
               "tokens at $5.00/M on claude-haiku-4-5 = $0.1000) exceeds the job's cost cap "
               "$0.0500 (max_cost_usd)")
    assert refused.stderr.splitlines() == [
        f"Error: invalid job(s), nothing was enqueued: {figures}"]
    # the dry run shows the figures, then fails the same way
    dry = farm_cli(e2e_env, "submit", "--dry-run", *over)
    assert dry.returncode == 1 and "OVER CAP" in dry.stdout
    assert dry.stderr.splitlines() == refused.stderr.splitlines()
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n"
                    + json.dumps({"prompt": "hi", "max_tokens": 20000, "complexity": "simple",
                                  "max_cost_usd": 0.05}) + "\n")
    for args in (("--file", str(path)), ("--dry-run", "--json", "--file", str(path))):
        done = farm_cli(e2e_env, "submit", *args)
        assert done.returncode == 1
        assert f"{path}:2: {figures}" in done.stderr
    assert _job_rows(farm) == before
