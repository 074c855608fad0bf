"""The server's own keys, kept in the database (careteam_secrets) so that every API
process, on every host, uses the same: the key that seals cursors (src/values.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.errors import DatabaseError
from src.services.transaction import Sql, run_transaction

CURSOR_KEY = Sql("SELECT value FROM careteam_secrets WHERE name = 'cursor'")


class SecretService:
    @staticmethod
    async def cursor_key(*, db: AsyncSession) -> bytes:
        """The key that seals cursors. Raises DatabaseError if the schema has none (not
        migrated), DatabaseUnavailable, DatabaseBusy."""

        async def work(driver: Any) -> bytes | None:
            value = await CURSOR_KEY.fetchval(driver, {})
            return None if value is None else bytes(value)

        key = await run_transaction(db, operation="cursor_key", work=work, read_only=True)
        if key is None:
            raise DatabaseError("the database has no cursor key: run the migrations")
        return key
