"""Secrets in view: with a broker and a database whose URLs hold passwords, what Flower
shows (workers' config and stats, task pages, the broker page), what Flower's process is
given (its environment) and what the worker and Flower write to their logs hold no
password, no API key and no prompt."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
import redis
from celery import Celery
from sqlalchemy.engine import make_url

from farm import services
from farm.client import Farm
from farm.jobs import JobStatus
from farm.settings import Settings, normalize_database_url
from tests_e2e import API_KEY, log_text, start_worker, stop, wait_ready, wait_until
from tests_support import free_port, fresh_database, wait_port

RUN = uuid.uuid4().hex[:10]
REDIS_PASSWORD = f"redis-pw-{RUN}"
DB_PASSWORD = f"db-pw-{RUN}"
FLOWER_PASSWORD = f"flower-pw-{RUN}"
PROMPT = f"PROMPT-SECRET-{RUN}"
SECRETS = {"the Redis password": REDIS_PASSWORD, "the database password": DB_PASSWORD,
           "the API key": API_KEY, "a prompt": PROMPT, "the Flower password": FLOWER_PASSWORD}


@pytest.fixture(scope="module")
def secret_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey of the test's own that wants a password: the broker URL holds it."""
    data_dir = tmp_path_factory.mktemp("valkey-with-password")
    port = free_port()
    services.start_valkey(data_dir, port)
    try:
        client = redis.Redis(port=port)
        client.config_set("requirepass", REDIS_PASSWORD)  # set after start: not in `ps`
        client.close()
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        services.stop_valkey(data_dir)


@pytest.fixture(scope="module")
def secret_database(service_urls: tuple[str, str]) -> Iterator[str]:
    """A database on the test server owned by a role with a password, migrated by that role:
    its URL holds the password (the test server may trust 127.0.0.1; the URL is the point)."""
    from alembic import command

    from farm.store.migrate import alembic_config

    server = make_url(normalize_database_url(service_urls[1]))
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)
    role = f"farm_secret_{RUN}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
    try:
        with fresh_database(service_urls[1], "farm_secret") as url:
            name = make_url(url).database
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')
            own = make_url(url).set(database=name, drivername="postgresql")
            with psycopg.connect(own.render_as_string(hide_password=False),
                                 autocommit=True) as conn:
                conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
            url = make_url(url).set(username=role, password=DB_PASSWORD).render_as_string(
                hide_password=False)
            assert DB_PASSWORD in url
            command.upgrade(alembic_config(url), "head")
            yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _flower_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def _found(text: str) -> list[str]:
    return [what for what, secret in SECRETS.items() if secret in text]


def test_flower_workers_and_logs_show_no_password_key_or_prompt(
    secret_broker: str, secret_database: str, sim_url: str, tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env.update({
        "FARM_BROKER_URL": secret_broker, "FARM_DATABASE_URL": secret_database,
        "FARM_DATA_DIR": str(tmp_path / "data"), "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": sim_url,
        # one environment for every farm process, as a deployment's .env would give it
        "FARM_FLOWER_USER": "ops", "FARM_FLOWER_PASSWORD": FLOWER_PASSWORD,
    })
    worker_log, flower_log = tmp_path / "worker.log", tmp_path / "flower.log"
    worker = start_worker(env, worker_log, "haiku-simple,farm-intake", concurrency=8)
    port = free_port()
    with open(flower_log, "wb") as out:
        flower = subprocess.Popen([sys.executable, "-m", "farm.cli", "flower", "--port",
                                   str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    base, auth = f"http://127.0.0.1:{port}", ("ops", FLOWER_PASSWORD)
    settings = Settings(broker_url=secret_broker, database_url=secret_database,
                        data_dir=tmp_path / "data")
    try:
        wait_ready(worker_log, worker)
        wait_port(port, timeout=60)
        # Flower's process: the broker URL (it needs it) and its own credentials, nothing else
        given = _flower_env(flower.pid)
        assert "ANTHROPIC_API_KEY" not in given and "FARM_FLOWER_PASSWORD" not in given
        assert API_KEY not in "\n".join(given.values())
        assert DB_PASSWORD not in "\n".join(given.values())
        assert given["FARM_BROKER_URL"] == secret_broker

        workers: dict[str, Any] = {}

        def no_worker_config() -> str | None:
            # what Flower's worker page shows: inspect's conf, stats, queues … (refreshed)
            workers.clear()
            workers.update(httpx2.get(f"{base}/api/workers", params={"refresh": 1},
                                      auth=auth, timeout=30).json())
            if any(isinstance(w, dict) and w.get("conf") for w in workers.values()):
                return None
            return f"Flower shows no worker config yet: {sorted(workers)}"

        wait_until(no_worker_config, timeout=60, interval=1)
        name = next(iter(workers))
        conf = workers[name]["conf"]
        # the real config is shown (a positive control), the broker URL in it censored
        assert conf["task_default_queue"] == "farm-intake"
        assert conf["broker_url"].endswith(secret_broker.rsplit("@", 1)[1])

        with Farm(settings) as farm:
            ids = [
                farm.submit(prompt=f"{PROMPT} what is 2 + 2?", complexity="simple"),
                farm.submit(prompt=f"[[sim:status=400]] {PROMPT}", complexity="simple"),
                farm.submit(prompt=f"[[sim:status=529]] {PROMPT}", complexity="simple"),
            ]
            routed = Celery("routed", broker=secret_broker, set_as_current=False)
            routed.conf.task_routes = ("farm.routing.router.route_task",)
            plain = Celery("plain", broker=secret_broker, set_as_current=False)
            try:
                ids.append(routed.send_task(
                    "farm.run_job", kwargs={"request": {"prompt": f"{PROMPT} hi?"}}).id)
                # no router: the sender's own repr of the arguments travels in the message
                ids.append(plain.send_task(
                    "farm.run_job", kwargs={"request": {"prompt": f"{PROMPT} hello?"}},
                    queue="farm-intake").id)
                nul = plain.send_task(
                    "farm.run_job", kwargs={"request": {"prompt": f"{PROMPT} a NUL \x00"}},
                    queue="farm-intake").id
                ids.append(nul)
            finally:
                routed.close()
                plain.close()
            views = {str(v.id): v for v in farm.wait(ids, timeout=120)}
        assert [views[i].status for i in map(str, ids)] == [
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.SUCCEEDED,
            JobStatus.SUCCEEDED, JobStatus.FAILED]
        assert "prompt" in (views[nul].error or "") and "NUL" in (views[nul].error or "")

        def tasks_not_shown() -> str | None:
            unseen = [job for job in map(str, ids) if httpx2.get(
                f"{base}/api/task/info/{job}", auth=auth, timeout=30).status_code != 200]
            return f"Flower has no task page for {unseen}" if unseen else None

        wait_until(tasks_not_shown, timeout=60, interval=1)
        pages = {path: httpx2.get(f"{base}{path}", auth=auth, timeout=30) for path in (
            "/api/workers?refresh=1", f"/worker/{name}", "/workers", "/api/tasks", "/tasks",
            *(f"/api/task/info/{job}" for job in ids),
            *(f"/task/{job}" for job in ids))}
        failed = {path: page.status_code for path, page in pages.items()
                  if page.status_code != 200}
        assert not failed, failed
        assert "task_default_queue" in pages[f"/worker/{name}"].text  # the Config tab
        assert str(ids[4]) in pages[f"/task/{ids[4]}"].text
        shown = {path: _found(page.text) for path, page in pages.items()}
        assert not {path: what for path, what in shown.items() if what}, shown
        logs = {log.name: _found(log_text(log)) for log in (worker_log, flower_log)}
        assert not {name: what for name, what in logs.items() if what}, logs
    finally:
        flower.terminate()
        flower.wait(20)
        stop(worker)
