"""The access log: who read or changed which patient's data, when, and with what outcome.

- `access_log` (organization, id): one entry per request to a route that reads or
  changes patient data (src/api/access_log.py decides which): the API key
  (`api_key_id`) or SMART client (`client_id`) that asked, the route template and the
  FHIR interaction and action, the names of the query parameters given (never their
  values: a search by name must not put the name here), the status answered, a
  search's result count, and the patients it named (`patient_ids`). `recorded_at` is
  set by the database.
- `access_log_patients` (organization, patient, recorded_at, entry): a row per patient
  an entry names, the index "which requests touched this patient" is read from. A
  btree on plain uuid and timestamptz columns, not a GIN index on the array: under
  row-level security PostgreSQL uses a condition as an index condition only if its
  operator is leakproof, and uuid and timestamptz comparisons are, while the array
  operators (`&&`, `@>`) are not (docs/PERFORMANCE.md has the measure).
- Both are tenant tables: row-level security ENABLEd and FORCEd, the policy of every
  other tenant table. The application role may INSERT and SELECT them and nothing
  else (no UPDATE, DELETE or TRUNCATE): the log is append-only to the API. The owner
  prunes it (`careteam access-log prune`).
- careteam_record_access(...) (sql/functions/careteam_record_access/v1.sql): the tenant,
  the entry and its patient rows in one statement (one round trip), written once
  whatever the retries (by the entry's id).

Online: two new, empty tables, their indexes and a function (moments' locks on catalog
entries), under lock_timeout; nothing existing is rewritten or locked for long.

downgrade() drops the function and both tables (the entries go with them: copy them
first if they must be kept; the release before writes none).

Revision ID: 20261207_access_log
Revises: 20261207_credential_admin
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_access_log"
down_revision: str | None = "20261207_credential_admin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
RECORD = (
    "careteam_record_access(uuid, uuid, uuid, uuid, text, text, text, text[], integer, "
    "integer, uuid[])"
)

NEW_TABLES = {
    "access_log": """
CREATE TABLE IF NOT EXISTS access_log (
    organization_id uuid NOT NULL,
    id uuid NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    api_key_id uuid,
    client_id uuid,
    route text NOT NULL,
    interaction text NOT NULL,
    action text NOT NULL,
    parameters text[] NOT NULL DEFAULT '{}',
    status bigint NOT NULL,
    result_count bigint,
    patient_ids uuid[] NOT NULL DEFAULT '{}',
    CONSTRAINT pk_access_log PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_access_log_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT ck_access_log_who CHECK (api_key_id IS NOT NULL OR client_id IS NOT NULL),
    CONSTRAINT ck_access_log_action CHECK (action IN ('C', 'R', 'U', 'D', 'E')),
    CONSTRAINT ck_access_log_status CHECK (status BETWEEN 100 AND 599),
    CONSTRAINT ck_access_log_result_count CHECK (result_count >= 0)
)""",
    "access_log_patients": """
CREATE TABLE IF NOT EXISTS access_log_patients (
    organization_id uuid NOT NULL,
    patient_id uuid NOT NULL,
    recorded_at timestamptz NOT NULL,
    entry_id uuid NOT NULL,
    CONSTRAINT pk_access_log_patients
        PRIMARY KEY (organization_id, patient_id, recorded_at, entry_id)
)""",
}

# New tables, still empty: their indexes are built in no time, with no writer to block.
NEW_TABLE_INDEXES = [
    """-- A table created by this very migration, still empty:
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS ix_access_log_organization_id_recorded_at_id
    ON access_log (organization_id, recorded_at, id)""",
]


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
        # Append-only to the application: it adds entries and reads them, never more.
        op.execute(f"REVOKE ALL ON {table} FROM {role}")
        op.execute(f"GRANT SELECT, INSERT ON {table} TO {role}")
    for sql in NEW_TABLE_INDEXES:
        op.execute(sql)
    run_sql_file("functions/careteam_record_access/v1.sql")
    op.execute(f"REVOKE ALL ON FUNCTION {RECORD} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {RECORD} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {RECORD}")
    for table in reversed(NEW_TABLES):
        op.execute(
            "-- Created by this revision; the release before neither writes nor reads it:\n"
            "-- squawk-ignore ban-drop-table\n"
            f"DROP TABLE IF EXISTS {table}"
        )
