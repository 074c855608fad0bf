"""Engines and sessions: one owner engine, one application engine, one session factory.

- The owner engine logs in as `DATABASE_URL`'s user; migrations and the cross-tenant
  diagnostic use it.
- The application engine runs as `APP_DB_ROLE`, a role that is neither superuser nor
  owner of the tables, so row-level security really applies to application traffic.
  It logs in with `APP_DATABASE_URL` when that is set, otherwise with `DATABASE_URL`'s
  login and the role switched at connect (the startup parameter ``role``).

Connections are made by asyncpg from the libpq URL itself, so every form psql accepts
(Unix sockets, ``sslmode``, ``.pgpass``, ``PG*`` variables) works unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from src.config import ConfigurationError, Settings
from src.embedded import resolve_database_url

APPLICATION_NAME = "careteam"


def _connector(url: str, settings: Settings, role: str | None) -> Callable[[], Awaitable[Any]]:
    server_settings = {
        "application_name": APPLICATION_NAME,
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
    }
    if role is not None:
        server_settings["role"] = role

    async def connect() -> Any:
        return await asyncpg.connect(
            url, server_settings=server_settings, timeout=settings.db_connect_timeout_s
        )

    return connect


def pg_error_fields(err: BaseException) -> tuple[str | None, str | None]:
    """(sqlstate, constraint name) of the PostgreSQL error behind `err`, if any.

    SQLAlchemy wraps the driver's exception (``.orig``), which wraps asyncpg's
    (``__cause__``); the constraint name is only on the innermost one.
    """
    sqlstate: str | None = None
    seen: BaseException | None = err
    while seen is not None:
        found = getattr(seen, "sqlstate", None)
        if isinstance(found, str):
            sqlstate = found
            constraint = getattr(seen, "constraint_name", None)
            if isinstance(constraint, str):
                return sqlstate, constraint
        seen = getattr(seen, "orig", None) or seen.__cause__
    return sqlstate, None


def create_engine(url: str, settings: Settings, *, role: str | None = None) -> AsyncEngine:
    """An async engine whose connections asyncpg opens from the libpq `url`."""
    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=_connector(url, settings, role),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # No pre-ping round trip on every checkout: a pooled connection that died fails
        # its first statement, and run_in_transaction retries on a fresh one.
        pool_pre_ping=False,
    )


@dataclass
class Database:
    """The engines and the session factory of one process."""

    url: str
    owner_engine: AsyncEngine
    app_engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        await self.app_engine.dispose()
        await self.owner_engine.dispose()


def open_database(settings: Settings, url: str | None = None) -> Database:
    """Create the engines for `url` (default: `resolve_database_url(settings)`).

    No connection is made until first use.
    """
    owner_url = url if url is not None else resolve_database_url(settings)
    if settings.app_database_url is not None:
        app_engine = create_engine(settings.app_database_url.get_secret_value(), settings)
    else:
        app_engine = create_engine(owner_url, settings, role=settings.app_db_role)
    return Database(
        url=owner_url,
        owner_engine=create_engine(owner_url, settings),
        app_engine=app_engine,
        sessionmaker=async_sessionmaker(app_engine, expire_on_commit=False),
    )


__all__ = ["ConfigurationError", "Database", "create_engine", "open_database"]
