"""Records an integrator can find, correct and retry against: patient identifiers, NPIs
unique per organization, search indexes, record versions, the audit trail of record
changes, and idempotency keys.

- `patient_identifiers` (organization, patient, system, value): an MRN and the like;
  a (system, value) names at most one patient per organization (its primary key).
- `providers`: an NPI belongs to at most one provider per organization (a unique index
  on (organization_id, npi) where there is one).
- `patients.version`, `providers.version`: 1 at creation, one more with each change of
  the record (the ETag of a read; If-Match on a write).
- Search: case-insensitive prefixes of first and last names, birth dates; every index
  leads with organization_id. Names are searched in `first_name_key` and
  `last_name_key` (the names in lower case, kept by a trigger on every write), not in an
  index on lower(name): under row-level security PostgreSQL uses a condition as an
  index condition only if its functions are leakproof, and lower() is not; a plain
  column compared with text_pattern_ops' operators (leakproof) is.
- `record_changes`: who (the actor) changed which fields (never their values) of which
  patient or provider, and when; numbered per record (`seq`: 1 for its creation, then
  2, 3, ...), so nothing in it counts other organizations' activity.
- `idempotency_keys`: per organization and key, the request's fingerprint and the
  response it got, written in the same transaction as the change itself.

Online: the new tables, columns (constant defaults or none: no table rewrite), the
name-key trigger and grants in short transactions; the name keys of existing rows are
filled in batches (BATCH_SIZE rows, each batch its own transaction, progress logged);
then every index on an existing table is built CONCURRENTLY. If two
providers of one organization share an NPI, the unique index cannot be built: the
migration stops before it, naming how many and how to find them (nothing else is
undone; run it again once they are corrected). Re-running after any failure is safe.

downgrade() drops what this added (identifiers, versions, changes and keys with it).

Revision ID: 20261206_records_and_sync
Revises: 20261206_lean_period_changes
Create Date: 2026-12-06
"""

import logging
import time
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from src.config import get_settings
from src.database_code import drop_invalid_index, run_sql_file

revision: str = "20261206_records_and_sync"
down_revision: str | None = "20261206_lean_period_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
# As this revision created them: frozen here, so that a later change to the
# application's constants never changes what this revision does.
IDENTIFIER_MAX_LENGTH = 255

NEW_TABLES = {
    "patient_identifiers": f"""
CREATE TABLE IF NOT EXISTS patient_identifiers (
    organization_id uuid NOT NULL,
    system text NOT NULL,
    value text NOT NULL,
    patient_id uuid NOT NULL,
    CONSTRAINT pk_patient_identifiers PRIMARY KEY (organization_id, system, value),
    CONSTRAINT fk_patient_identifiers_organization_id_patient_id_patients
        FOREIGN KEY (organization_id, patient_id)
        REFERENCES patients (organization_id, id) ON DELETE RESTRICT,
    CONSTRAINT ck_patient_identifiers_system
        CHECK (length(system) BETWEEN 1 AND {IDENTIFIER_MAX_LENGTH}),
    CONSTRAINT ck_patient_identifiers_value
        CHECK (length(value) BETWEEN 1 AND {IDENTIFIER_MAX_LENGTH})
)""",
    "record_changes": """
CREATE TABLE IF NOT EXISTS record_changes (
    organization_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    record_type text NOT NULL,
    record_id uuid NOT NULL,
    seq bigint NOT NULL,
    action text NOT NULL,
    fields text[] NOT NULL,
    actor text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_record_changes PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_record_changes_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT ck_record_changes_record_type CHECK (record_type IN ('patient', 'provider')),
    CONSTRAINT ck_record_changes_action CHECK (action IN ('created', 'updated'))
)""",
    "idempotency_keys": """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    organization_id uuid NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    status_code bigint NOT NULL,
    body bytea NOT NULL,
    etag text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (organization_id, key),
    CONSTRAINT fk_idempotency_keys_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT
)""",
}

# New tables, still empty: their indexes are built in no time, with no writer to block.
NEW_TABLE_INDEXES = [
    f"""-- A table created by this very migration, still empty:
-- squawk-ignore require-concurrent-index-creation
CREATE {"UNIQUE " if name.startswith("uq_") else ""}INDEX IF NOT EXISTS {name} ON {definition}"""
    for name, definition in (
        (
            "ix_patient_identifiers_organization_id_patient_id",
            "patient_identifiers (organization_id, patient_id)",
        ),
        (
            "uq_record_changes_organization_id_record_id_seq",
            "record_changes (organization_id, record_id, seq)",
        ),
        (
            "ix_idempotency_keys_organization_id_created_at",
            "idempotency_keys (organization_id, created_at)",
        ),
    )
]

# Indexes on existing tables: (name, table, definition), built CONCURRENTLY.
SEARCH_INDEXES = [
    (
        f"ix_{table}_organization_id_{column}_key",
        table,
        f"(organization_id, {column}_key text_pattern_ops, id)",
    )
    for table in ("patients", "providers")
    for column in ("last_name", "first_name")
] + [("ix_patients_organization_id_dob_id", "patients", "(organization_id, dob, id)")]

BATCH_SIZE = 10_000
PROGRESS_EVERY_S = 10
logger = logging.getLogger("alembic.runtime.migration")

NPI_INDEX = "uq_providers_organization_id_npi"

SHARED_NPIS = """
SELECT count(*) FROM (
    SELECT 1 FROM providers WHERE npi IS NOT NULL
    GROUP BY organization_id, npi HAVING count(*) > 1
) AS shared
"""


class SharedNpis(RuntimeError):
    """Providers of one organization share an NPI: the unique index cannot be built."""


def _timeouts() -> None:
    # Never queue for long behind (and so in front of) the site's own queries.
    op.execute("SET lock_timeout = '5s'")
    op.execute("SET statement_timeout = 0")


def _fill_name_keys(table: str) -> None:
    """The name keys of the rows written before the trigger, in batches by id."""
    fill = (
        f"WITH batch AS (SELECT id FROM {table} WHERE id > CAST(:after AS uuid) "
        "ORDER BY id LIMIT :n), "
        f"filled AS (UPDATE {table} AS t SET first_name_key = lower(t.first_name), "
        "last_name_key = lower(t.last_name) FROM batch WHERE t.id = batch.id "
        "AND (t.first_name_key IS DISTINCT FROM lower(t.first_name) "
        "OR t.last_name_key IS DISTINCT FROM lower(t.last_name))) "
        "SELECT id FROM batch ORDER BY id DESC LIMIT 1"
    )
    after = "00000000-0000-0000-0000-000000000000"
    if context.is_offline_mode():  # the statement once, for review and squawk
        op.execute(text(fill).bindparams(after=after, n=BATCH_SIZE))
        return
    connection = op.get_bind()
    total = int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    started = reported = time.monotonic()
    done = 0
    while True:
        end = connection.execute(text(fill), {"after": after, "n": BATCH_SIZE}).scalar()
        if end is None:
            break
        after = str(end)
        done += BATCH_SIZE
        if time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            logger.info(
                "name keys of %s: %d of %d rows, %.0f s",
                table,
                min(done, total),
                total,
                reported - started,
            )


def _check_npis() -> None:
    if context.is_offline_mode():
        return
    shared = int(op.get_bind().execute(text(SHARED_NPIS)).scalar_one())
    if shared:
        raise SharedNpis(
            f"{shared} NPI(s) are held by more than one provider of an organization, so "
            "NPIs cannot be made unique. Find them with:\n"
            "  SELECT organization_id, npi, array_agg(id) FROM providers "
            "WHERE npi IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1;\n"
            "correct each (as the owner: UPDATE providers SET npi = <the right one, or "
            "NULL> WHERE id = ...), then run `alembic upgrade head` again."
        )


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    for table, sql in NEW_TABLES.items():
        op.execute(sql)
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING (organization_id = {CURRENT_TENANT}) "
            f"WITH CHECK (organization_id = {CURRENT_TENANT})"
        )
    for sql in NEW_TABLE_INDEXES:
        op.execute(sql)
    op.execute(f"GRANT SELECT, INSERT, DELETE ON patient_identifiers TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON record_changes TO {role}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {role}")

    with op.get_context().autocommit_block():
        _timeouts()
        # One table per statement (a writer holding both could deadlock with this).
        _check_npis()  # before the long work: a stop here has changed nothing that matters
        run_sql_file("functions/careteam_name_keys/v1.sql")
        for table in ("patients", "providers"):
            for column in (
                "version bigint DEFAULT 1 NOT NULL",
                "first_name_key text",
                "last_name_key text",
            ):
                op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
            op.execute(
                "CREATE OR REPLACE TRIGGER careteam_name_keys BEFORE INSERT OR UPDATE OF "
                f"first_name, last_name ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION careteam_name_keys()"
            )
            _fill_name_keys(table)
        for name, table, columns in SEARCH_INDEXES:
            drop_invalid_index(name)
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {columns}")
        _check_npis()  # again: a writer may have shared one meanwhile
        drop_invalid_index(NPI_INDEX)
        op.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {NPI_INDEX} "
            "ON providers (organization_id, npi) WHERE npi IS NOT NULL"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _timeouts()
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NPI_INDEX}")
        for name, _table, _columns in SEARCH_INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in NEW_TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
    for table in ("providers", "patients"):
        op.execute(f"DROP TRIGGER IF EXISTS careteam_name_keys ON {table}")
        for column in ("version", "first_name_key", "last_name_key"):
            op.execute(
                "-- Added by this revision; the earlier release does not read it:\n"
                "-- squawk-ignore ban-drop-column\n"
                f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column}"
            )
    op.execute("DROP FUNCTION IF EXISTS careteam_name_keys()")
