"""Bringing existing data under the one-primary rule, online.

Used by the migration `20260114_unique_primary` and by `careteam check --fix --execute`,
so both apply exactly the same rule, through the same lock, with the same events.

Every function takes a sync SQLAlchemy connection in AUTOCOMMIT mode: each statement
is its own transaction, so dedupe batches commit as they go (locks are held per batch,
never for the whole table) and CREATE INDEX CONCURRENTLY can run.

The dedupe rule: for each (organization_id, patient_id) with several primaries, the
primary with the latest assigned_at (tie: highest id) stays primary; the others become
secondary. No row is deleted; every demotion is recorded as a `migration_dedupe` event
naming the demoted assignment and the kept provider.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from src import primary_index
from src.database_code import sql_text
from src.db import pg_error_fields
from src.primary_index import UNIQUE_PRIMARY_INDEX

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000

# RLS is FORCEd on the tenant tables: a role without BYPASSRLS would see no rows and find
# nothing to fix. Refuse to run rather than report a false "clean".
REQUIRE_BYPASS_RLS = """
DO $$
BEGIN
    IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION USING MESSAGE = 'role ' || current_user
            || ' must be superuser or have BYPASSRLS to fix care team data';
    END IF;
END
$$
"""

# The duplicated (organization, patient) pairs, numbered into batches, found in one scan.
CREATE_BATCHES = """
CREATE TEMP TABLE careteam_dedupe_batch AS
SELECT organization_id, patient_id,
       (row_number() OVER (ORDER BY organization_id, patient_id) - 1) / {batch_size} AS batch
FROM care_team_assignments
WHERE is_primary_provider {organization_filter}
GROUP BY organization_id, patient_id
HAVING count(*) > 1
"""

INDEX_BATCHES = """
-- The temporary table just created by this session; nothing else can write to it:
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS careteam_dedupe_batch_batch ON pg_temp.careteam_dedupe_batch (batch)
"""

DROP_BATCHES = """
-- A temporary table of this session, which no client sees:
-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS pg_temp.careteam_dedupe_batch
"""


# One batch, as one transaction (the files say what it does): v2 where the schema has
# reasons and periods (careteam_begin_change, from 20261128_care_team_periods on), v1
# before it (as during the migration 20260114_unique_primary).
BATCH_FUNCTION = "temporary/careteam_dedupe_batch/v1.sql"
BATCH_FUNCTION_WITH_REASONS = "temporary/careteam_dedupe_batch/v2.sql"


HAS_REASONS = "SELECT to_regproc('careteam_begin_change') IS NOT NULL"


CREATE_INDEX = f"""
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {UNIQUE_PRIMARY_INDEX}
ON care_team_assignments (organization_id, patient_id)
WHERE is_primary_provider = true
"""

DROP_INDEX = f"DROP INDEX CONCURRENTLY IF EXISTS {UNIQUE_PRIMARY_INDEX}"


class IndexBuildFailed(RuntimeError):
    """The index could not be made valid within the attempts allowed (nothing left INVALID)."""


def _execute(conn: Connection, sql: str) -> None:
    conn.exec_driver_sql(sql)


@contextmanager
def online_session(conn: Connection, *, lock_timeout_ms: int) -> Iterator[None]:
    """No statement timeout (the build takes as long as it takes), a short lock timeout
    (never queue behind, and so in front of, the site's writers for long)."""
    _execute(conn, "SET statement_timeout = 0")
    _execute(conn, f"SET lock_timeout = '{int(lock_timeout_ms)}ms'")
    try:
        yield
    finally:
        _execute(conn, "RESET statement_timeout")
        _execute(conn, "RESET lock_timeout")


def require_bypass_rls(conn: Connection) -> None:
    _execute(conn, REQUIRE_BYPASS_RLS)


def index_state(conn: Connection) -> str:
    """ "valid", "invalid" (an interrupted or failed concurrent build) or "missing"."""
    return primary_index.index_state(conn.exec_driver_sql(primary_index.INDEX_VALID).scalar())


def dedupe(
    conn: Connection,
    *,
    actor: str,
    organization_id: uuid.UUID | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Demote duplicate primaries batch by batch; return how many were demoted.

    Idempotent: a second run finds nothing. Safe to interrupt: each committed batch is
    complete (rows and events), the rest is found again by the next run.
    """
    organization_filter = (
        f"AND organization_id = '{uuid.UUID(str(organization_id))}'" if organization_id else ""
    )
    _execute(conn, DROP_BATCHES)
    _execute(
        conn,
        CREATE_BATCHES.format(batch_size=int(batch_size), organization_filter=organization_filter),
    )
    # Temporary tables get no statistics by themselves: without them the planner may
    # scan the whole assignments table once per batch instead of using its index.
    _execute(conn, INDEX_BATCHES)
    _execute(conn, "ANALYZE pg_temp.careteam_dedupe_batch")
    with_reasons = bool(conn.exec_driver_sql(HAS_REASONS).scalar())
    _execute(conn, sql_text(BATCH_FUNCTION_WITH_REASONS if with_reasons else BATCH_FUNCTION))
    try:
        batches = conn.exec_driver_sql(
            "SELECT coalesce(max(batch) + 1, 0), count(*) FROM pg_temp.careteam_dedupe_batch"
        ).one()
        total_batches, patients = int(batches[0]), int(batches[1])
        logger.info(
            "dedupe: %d patient(s) with duplicate primaries, %d batch(es)", patients, total_batches
        )
        demoted = 0
        for batch in range(total_batches):
            demoted += int(
                conn.execute(
                    text("SELECT pg_temp.careteam_dedupe_batch(:batch, :actor)"),
                    {"batch": batch, "actor": actor},
                ).scalar_one()
            )
            logger.info(
                "dedupe: batch %d/%d done, %d demoted so far", batch + 1, total_batches, demoted
            )
        return demoted
    finally:
        _execute(conn, DROP_BATCHES)


def drop_index(conn: Connection) -> None:
    """Drop the index (valid or not) without blocking writers."""
    _execute(conn, DROP_INDEX)


def build_index(
    conn: Connection,
    *,
    actor: str,
    attempts: int = 6,
    retry_delay_s: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> None:
    """Make the unique index exist and be valid, without blocking writers.

    Builds it with CREATE UNIQUE INDEX CONCURRENTLY. A leftover INVALID index (an
    interrupted earlier build) is dropped concurrently first. If the build is refused
    because duplicates were written while it ran, dedupes again and retries; on a lock
    timeout, waits and retries. Never leaves an INVALID index behind: raises
    IndexBuildFailed after `attempts`.
    """
    for attempt in range(1, attempts + 1):
        state = index_state(conn)
        if state == "valid":
            return
        try:
            if state == "invalid":
                logger.info(
                    "index %s is INVALID (interrupted build): dropping it", UNIQUE_PRIMARY_INDEX
                )
                drop_index(conn)
            logger.info(
                "building %s concurrently (attempt %d/%d)", UNIQUE_PRIMARY_INDEX, attempt, attempts
            )
            _execute(conn, CREATE_INDEX)
        except DBAPIError as err:
            sqlstate = pg_error_fields(err)[0]
            if sqlstate == "23505":
                logger.info("duplicates were written during the build: deduplicating again")
                _drop_if_invalid(conn)
                dedupe(conn, actor=actor, batch_size=batch_size)
            elif sqlstate == "55P03":
                logger.info(
                    "lock timeout: another transaction holds a conflicting lock; retrying in %.1fs",
                    retry_delay_s * attempt,
                )
                time.sleep(retry_delay_s * attempt)
            else:
                _drop_if_invalid(conn)
                raise
    if index_state(conn) != "valid":
        _drop_if_invalid(conn)
        raise IndexBuildFailed(
            f"{UNIQUE_PRIMARY_INDEX} could not be built in {attempts} attempts; "
            "no INVALID index was left behind, re-run the migration"
        )


def _drop_if_invalid(conn: Connection) -> None:
    if index_state(conn) == "invalid":
        drop_index(conn)


def enforce(conn: Connection, *, actor: str, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """The whole upgrade: check the role, dedupe, build the index. Returns demotions."""
    require_bypass_rls(conn)
    with online_session(conn, lock_timeout_ms=2000):
        demoted = dedupe(conn, actor=actor, batch_size=batch_size)
        build_index(conn, actor=actor, batch_size=batch_size)
    return demoted


def offline_sql(*, actor: str) -> list[str]:
    """The statements of `enforce`, for `alembic upgrade --sql` (review, squawk).

    Online, the batch call runs once per batch and the build is retried as needed.
    """
    return [
        REQUIRE_BYPASS_RLS,
        "SET statement_timeout = 0",
        "SET lock_timeout = '2000ms'",
        DROP_BATCHES,
        CREATE_BATCHES.format(batch_size=DEFAULT_BATCH_SIZE, organization_filter=""),
        INDEX_BATCHES,
        "ANALYZE pg_temp.careteam_dedupe_batch",
        sql_text(BATCH_FUNCTION),
        f"SELECT pg_temp.careteam_dedupe_batch(0, '{actor}')",
        DROP_BATCHES,
        CREATE_INDEX,
        "RESET statement_timeout",
        "RESET lock_timeout",
    ]
