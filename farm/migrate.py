"""Schema migrations (Alembic), configured from settings: `farm migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from farm.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    from farm.celery_app import resolve_urls

    _, database_url = resolve_urls(settings)
    command.upgrade(alembic_config(database_url), revision)
