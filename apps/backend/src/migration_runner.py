"""Schema migrations, run programmatically (the CLI, the tests, the load script).

`alembic` on the command line does the same from apps/backend/alembic.ini.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from src.config import BACKEND_DIR, ConfigurationError

# Read from the checkout, never packaged: the package is installed editable (README).
CHECKOUT_FILES = ("alembic.ini", "migrations", "sql")


# Indexes whose columns carry a COLLATE, which Alembic's reflection drops: a comparison of
# the models with the database (`alembic check`, the tests) would see them changed every
# time. Their definition is their revision's; a test compares it with the database's
# (tests/migrations/test_migrations.py, TestPatientOrders).
COLLATED_INDEXES = frozenset({"ix_patients_organization_id_name_order"})


def compared(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    """Alembic's include_object: every object but COLLATED_INDEXES."""
    return not (type_ == "index" and name in COLLATED_INDEXES)


def alembic_config(connection: Connection | None = None) -> Config:
    """The project's Alembic config; with `connection`, migrations run on it. Raises
    ConfigurationError when the package was installed without its checkout."""
    missing = [name for name in CHECKOUT_FILES if not (BACKEND_DIR / name).exists()]
    if missing:
        raise ConfigurationError(
            f"{', '.join(missing)} not found beside the installed package ({BACKEND_DIR}): "
            "the migrations and the database code are read from the checkout, so install "
            "it editable from there: `pip install -e apps/backend` (or `uv sync`)"
        )
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


# Alembic runs each migration in its own transaction on the connection, and steps out
# of it where a migration needs to (CREATE INDEX CONCURRENTLY), so the connection is
# handed over with no transaction begun.


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database behind `engine` (the owner's) up to `revision`."""
    async with engine.connect() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
        await conn.commit()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Migrate the database behind `engine` (the owner's) down to `revision`."""
    async with engine.connect() as conn:
        await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))
        await conn.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
