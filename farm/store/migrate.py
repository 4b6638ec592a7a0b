"""Schema migrations (Alembic), configured from settings: `farm migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from farm.services import resolve_urls
from farm.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(resolve_urls(settings).database_url), revision)
