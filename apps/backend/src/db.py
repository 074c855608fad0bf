"""Engines and sessions: one owner engine, one application engine, one session factory.

- The owner engine logs in as `DATABASE_URL`'s user; migrations, the cross-tenant
  diagnostic and tenant administration use it. The API never does (nothing connects
  until first use, so the API process holds no owner connection).
- The application engine logs in as `APP_DB_ROLE` itself, a LOGIN role that is neither
  superuser nor owner of the tables, so row-level security really applies and no
  `RESET ROLE` or `SET ROLE` can leave it. Its URL is `APP_DATABASE_URL`, or else the
  owner's with the application role as the user and no password (libpq then takes one
  from `PGPASSFILE`/`~/.pgpass`; the embedded server trusts its private socket).

Connections are made by asyncpg from the libpq URL itself, so every form psql accepts
(Unix sockets, ``sslmode``, ``.pgpass``, ``PG*`` variables) works unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

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


def _connector(url: str, settings: Settings) -> Callable[[], Awaitable[Any]]:
    server_settings = {
        "application_name": APPLICATION_NAME,
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_lock_timeout_ms),
    }

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


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    """An async engine whose connections asyncpg opens from the libpq `url`."""
    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=_connector(url, settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # No pre-ping round trip on every checkout: a pooled connection that died fails
        # its first statement, and run_transaction retries on a fresh one.
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


def application_url(settings: Settings, owner_url: str) -> str:
    """APP_DATABASE_URL, or `owner_url` logging in as APP_DB_ROLE without a password."""
    if settings.app_database_url is not None:
        return settings.app_database_url.get_secret_value()
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{quote(settings.app_db_role)}@{host}").geturl()


def open_database(settings: Settings, url: str | None = None) -> Database:
    """Create the engines for `url` (default: `resolve_database_url(settings)`).

    No connection is made until first use.
    """
    owner_url = url if url is not None else resolve_database_url(settings)
    app_engine = create_engine(application_url(settings, owner_url), settings)
    return Database(
        url=owner_url,
        owner_engine=create_engine(owner_url, settings),
        app_engine=app_engine,
        sessionmaker=async_sessionmaker(app_engine, expire_on_commit=False),
    )


__all__ = ["ConfigurationError", "Database", "create_engine", "open_database"]
