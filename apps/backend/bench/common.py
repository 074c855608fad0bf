"""What the benchmark scripts share: a throwaway database, and progress lines."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from src.config import to_libpq_url
from src.embedded import ensure_database, start_embedded_server, with_database


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def throwaway_database(
    prefix: str, server_url: str | None = None
) -> AsyncIterator[tuple[str, Path | None]]:
    """(libpq URL, embedded data directory or None) of a new database, dropped afterwards.

    On a throwaway embedded server (deleted at exit) unless `server_url` names a server.
    """
    data_dir = None
    if server_url:
        server = to_libpq_url(server_url)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix=f"careteam-{prefix}-"))
        server = start_embedded_server(data_dir, delete_on_exit=True)
    async with database_on(server, prefix) as url:
        yield url, data_dir


@asynccontextmanager
async def database_on(server: str, prefix: str) -> AsyncIterator[str]:
    """The libpq URL of a new database on `server` (a libpq URL), dropped afterwards."""
    name = f"careteam_{prefix}_{uuid.uuid4().hex[:8]}"
    await ensure_database(server, name)
    try:
        yield with_database(server, name)
    finally:
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
