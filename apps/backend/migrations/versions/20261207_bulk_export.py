"""FHIR Bulk Data export: its jobs.

- `export_jobs`: one row per `$export` kick-off, keyed (organization_id, id): who asked
  (`requester`, the key or SMART client, the only one that may read its status and
  files), the level (`system`, `patient` or `group`, with `group_id`, the provider whose
  Group), the resource types, `since`, the `_typeFilter` queries and the request URL as
  given; its state (`queued`, `running`, `completed`, `failed`), attempts, the runner's
  `heartbeat_at`, `progress`; once done, `transaction_time`, `output` (the manifest's
  files: type, file name, count) and `error` (OperationOutcomes), and when the files
  expire (`expires_after_s` after the end, taken from the setting at kick-off). A
  cancelled job (DELETE) is deleted with its files. Row-level security ENABLEd and
  FORCEd with the tenant policy; the application role reads and writes its own
  organization's jobs.
- Four SECURITY DEFINER functions for the runner in `careteam serve`, which works across
  organizations: careteam_claim_export (the oldest queued job), careteam_recover_exports
  (a job whose runner stopped: queued again or failed), careteam_expire_exports (jobs
  whose files have expired) and careteam_known_exports (which ids are still jobs).

Online: the table is new and empty; nothing else changes.

downgrade() drops the functions and the table (jobs and their manifests are lost; the
files under the export directory are left for the operator to delete).

Revision ID: 20261207_bulk_export
Revises: 20261207_patient_primary_sort
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_bulk_export"
down_revision: str | None = "20261207_patient_primary_sort"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
# Each function's signature and its file.
FUNCTIONS = {
    "careteam_claim_export()": "functions/careteam_claim_export/v1.sql",
    "careteam_recover_exports(interval, integer, jsonb)": (
        "functions/careteam_recover_exports/v1.sql"
    ),
    "careteam_expire_exports()": "functions/careteam_expire_exports/v1.sql",
    "careteam_known_exports(uuid[])": "functions/careteam_known_exports/v1.sql",
}

EXPORT_JOBS = """
CREATE TABLE IF NOT EXISTS export_jobs (
    organization_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    requester text NOT NULL,
    level text NOT NULL,
    group_id uuid,
    types text[] NOT NULL,
    since timestamptz,
    type_filters text[] NOT NULL DEFAULT '{}',
    request text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    attempts bigint NOT NULL DEFAULT 0,
    heartbeat_at timestamptz,
    progress text,
    transaction_time timestamptz,
    output jsonb NOT NULL DEFAULT '[]',
    error jsonb NOT NULL DEFAULT '[]',
    expires_after_s bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    expires_at timestamptz,
    CONSTRAINT pk_export_jobs PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_export_jobs_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT ck_export_jobs_level CHECK (
        level IN ('system', 'patient', 'group')
        AND (group_id IS NOT NULL) = (level = 'group')),
    CONSTRAINT ck_export_jobs_status CHECK (
        status IN ('queued', 'running', 'completed', 'failed')),
    CONSTRAINT ck_export_jobs_expires_after_s CHECK (expires_after_s > 0)
)"""

NEW_TABLE_INDEXES = [
    "-- A table created by this very migration, still empty:\n"
    "-- squawk-ignore require-concurrent-index-creation\n"
    "CREATE INDEX IF NOT EXISTS ix_export_jobs_status_created_at "
    "ON export_jobs (status, created_at)",
]


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute(EXPORT_JOBS)
    op.execute("ALTER TABLE export_jobs ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE export_jobs FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON export_jobs")
    op.execute(
        "CREATE POLICY tenant_isolation ON export_jobs "
        f"USING (organization_id = {CURRENT_TENANT}) "
        f"WITH CHECK (organization_id = {CURRENT_TENANT})"
    )
    for sql in NEW_TABLE_INDEXES:
        op.execute(sql)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON export_jobs TO {role}")
    for signature, path in FUNCTIONS.items():
        run_sql_file(path)
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.execute("DROP TABLE IF EXISTS export_jobs")
