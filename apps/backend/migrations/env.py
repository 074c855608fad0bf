"""Alembic environment: async, on the owner connection from the backend's settings.

Online: connects with `DATABASE_URL` (or the embedded server). A caller that already has
a connection (the tests) passes it in `config.attributes["connection"]`.
Offline (`alembic upgrade head --sql`): prints the SQL, for review and for squawk.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from src.config import get_settings
from src.db import create_engine
from src.embedded import resolve_database_url
from src.migration_runner import compared
from src.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=compared,  # src/migration_runner.py: COLLATED_INDEXES
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    settings = get_settings()
    engine = create_engine(resolve_database_url(settings), settings)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url="postgresql://", target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _configure(given)
else:
    asyncio.run(_run_online())
