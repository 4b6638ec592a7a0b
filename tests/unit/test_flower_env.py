"""`farm flower` gives Flower only what it needs of the environment (farm.cli.main): the
broker and the queues to build the farm's Celery app, its own credentials, the system's
basics; never the API key, the database URL or the farm's copy of Flower's password.
(tests/e2e/test_secrets.py reads the environment of a real Flower process.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.app import create_app
from farm.cli.main import flower_env
from farm.settings import Settings

BROKER = "redis://:broker-pw@10.0.0.5:6379/0"
ENVIRON = {
    "PATH": "/usr/bin", "HOME": "/home/ops", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/srv/farm", "FLOWER_URL_PREFIX": "flower",
    "FARM_BROKER_URL": BROKER, "FARM_DATA_DIR": "/srv/farm/.farm",
    "FARM_QUEUES": '[{"name": "q", "model": "claude-haiku-4-5", "complexity": "simple"}]',
    "FARM_DATABASE_URL": "postgresql://farm:db-pw@10.0.0.6/farm",
    "ANTHROPIC_API_KEY": "sk-ant-secret", "FARM_ANTHROPIC_API_KEY": "sk-ant-secret",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:8787",
    "FARM_FLOWER_USER": "ops", "FARM_FLOWER_PASSWORD": "flower-pw",
    "AWS_SECRET_ACCESS_KEY": "aws-secret", "GITHUB_TOKEN": "gh-token",
}


def test_flower_gets_the_broker_and_its_credentials_and_no_other_secret() -> None:
    settings = Settings(flower_user="ops", flower_password="flower-pw")
    env = flower_env(settings, ENVIRON, BROKER)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/ops", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/srv/farm", "FLOWER_URL_PREFIX": "flower",
        "FARM_BROKER_URL": BROKER, "FARM_DATA_DIR": "/srv/farm/.farm",
        "FARM_QUEUES": ENVIRON["FARM_QUEUES"],
        "FLOWER_BASIC_AUTH": "ops:flower-pw",
    }
    for secret in ("sk-ant-secret", "db-pw", "aws-secret", "gh-token"):
        assert secret not in repr(env)


def test_the_app_flower_builds_from_that_environment_needs_no_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = flower_env(Settings(flower_user="ops", flower_password="pw"),
                     {**ENVIRON, "FARM_DATA_DIR": str(tmp_path)}, BROKER)
    for name in list(ENVIRON):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app(Settings())  # no database URL, no embedded services under the data dir
    try:
        assert app.conf.broker_url == BROKER
        assert "q" in {q.name for q in app.conf.task_queues}  # FARM_QUEUES was read
    finally:
        app.close()
