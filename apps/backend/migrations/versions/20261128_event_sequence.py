"""Care team events get a sequence number per organization (`seq`): 1, 2, 3, ...

History ids and cursors used to be one counter for all tenants, so a tenant could watch
another's activity in the gaps. Now every event is numbered within its organization, in
commit order: a BEFORE INSERT trigger takes the next number from the organization's row
in care_team_event_sequences, whose row lock it holds until the transaction commits, so
an organization's numbers are gapless and ordered as its transactions committed (the
change feed relies on it). Every writer gets this for free (the service, the dedupe,
`careteam check --fix`, manual SQL).

Online, for large and busy tables:
1. one short transaction adds the column (nullable), the counter table with a row per
   existing organization marked not ready, and a trigger that numbers new events only
   where the organization is ready (and otherwise only takes the counter's row lock);
2. each organization is numbered in batches (by id), each batch a short transaction that
   holds the organization's counter row, so events written meanwhile wait for the batch
   instead of slipping past it; the last batch marks the organization ready;
3. the trigger becomes its final, simple form; `seq` becomes NOT NULL through a
   validated CHECK (no long lock); the unique (organization_id, seq) and the history's
   (organization_id, patient_id, seq) indexes are built concurrently.
Re-running after a failure at any point is safe.

downgrade() removes the trigger, the counters and the column, and restores the history
index on (organization_id, patient_id, id).

Revision ID: 20261128_event_sequence
Revises: 20260114_unique_primary
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261128_event_sequence"
down_revision: str | None = "20260114_unique_primary"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_SIZE = 10_000
CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"

CREATE_SEQUENCES = """
CREATE TABLE IF NOT EXISTS care_team_event_sequences (
    organization_id uuid NOT NULL,
    last_seq bigint NOT NULL DEFAULT 0,
    ready boolean NOT NULL DEFAULT true,
    CONSTRAINT pk_care_team_event_sequences PRIMARY KEY (organization_id),
    CONSTRAINT fk_care_team_event_sequences_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT
)
"""

CREATE_TRIGGER = """
CREATE OR REPLACE TRIGGER number_care_team_event
BEFORE INSERT ON care_team_events
FOR EACH ROW EXECUTE FUNCTION number_care_team_event()
"""

TO_NUMBER = """
SELECT organization_id FROM care_team_event_sequences WHERE NOT ready
UNION
SELECT DISTINCT organization_id FROM care_team_events WHERE seq IS NULL
ORDER BY 1
"""


def _timeouts() -> None:
    # Never queue for long behind (and so in front of) the site's own queries.
    op.execute("SET lock_timeout = '5s'")
    op.execute("SET statement_timeout = 0")


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute(CREATE_SEQUENCES)
    op.execute("ALTER TABLE care_team_event_sequences ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE care_team_event_sequences FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON care_team_event_sequences")
    op.execute(
        "CREATE POLICY tenant_isolation ON care_team_event_sequences "
        f"USING (organization_id = {CURRENT_TENANT}) "
        f"WITH CHECK (organization_id = {CURRENT_TENANT})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON care_team_event_sequences TO {role}")
    # (On a re-run after step 3 had begun: the column the transitional trigger reads.)
    op.execute(
        "ALTER TABLE care_team_event_sequences "
        "ADD COLUMN IF NOT EXISTS ready boolean NOT NULL DEFAULT true"
    )
    op.execute("ALTER TABLE care_team_events ADD COLUMN IF NOT EXISTS seq bigint")
    op.execute(
        "INSERT INTO care_team_event_sequences (organization_id, last_seq, ready) "
        "SELECT id, 0, false FROM organizations ON CONFLICT (organization_id) DO NOTHING"
    )
    run_sql_file("functions/number_care_team_event/v1.sql")  # transitional
    op.execute(CREATE_TRIGGER)

    with op.get_context().autocommit_block():
        _timeouts()
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_care_team_events_unnumbered "
            "ON care_team_events (organization_id, id) WHERE seq IS NULL"
        )
        run_sql_file("temporary/careteam_number_events/v1.sql")
        _number_every_organization()
        run_sql_file("functions/number_care_team_event/v2.sql")  # final
        op.execute(
            "-- A leftover of an interrupted run, re-added below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            "ALTER TABLE care_team_events "
            "DROP CONSTRAINT IF EXISTS ck_care_team_events_seq_not_null"
        )
        op.execute(
            "ALTER TABLE care_team_events ADD CONSTRAINT ck_care_team_events_seq_not_null "
            "CHECK (seq IS NOT NULL) NOT VALID"
        )
        op.execute(
            "ALTER TABLE care_team_events VALIDATE CONSTRAINT ck_care_team_events_seq_not_null"
        )
        # With the validated CHECK, SET NOT NULL needs no scan of its own.
        op.execute(
            "-- Idempotent, so a re-run is safe:\n"
            "-- squawk-ignore prefer-robust-stmts\n"
            "ALTER TABLE care_team_events ALTER COLUMN seq SET NOT NULL"
        )
        op.execute(
            "-- Its guarantee now lives in NOT NULL:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            "ALTER TABLE care_team_events "
            "DROP CONSTRAINT IF EXISTS ck_care_team_events_seq_not_null"
        )
        op.execute(
            "-- Only the backfill read it (the final trigger does not):\n"
            "-- squawk-ignore ban-drop-column\n"
            "ALTER TABLE care_team_event_sequences DROP COLUMN IF EXISTS ready"
        )
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "
            "uq_care_team_events_organization_id_seq ON care_team_events (organization_id, seq)"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            "ix_care_team_events_organization_id_patient_id_seq "
            "ON care_team_events (organization_id, patient_id, seq)"
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_care_team_events_unnumbered")
        op.execute(
            "DROP INDEX CONCURRENTLY IF EXISTS ix_care_team_events_organization_id_patient_id_id"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def _number_every_organization() -> None:
    if context.is_offline_mode():  # the statements once, for review and squawk
        op.execute(
            "SELECT pg_temp.careteam_number_events(organization_id, 10000) FROM ("
            + TO_NUMBER
            + ") AS o"
        )
        return
    connection = op.get_bind()
    for (organization_id,) in connection.execute(text(TO_NUMBER)).all():
        while (
            connection.execute(
                text("SELECT pg_temp.careteam_number_events(:org, :batch)"),
                {"org": organization_id, "batch": BATCH_SIZE},
            ).scalar_one()
            == BATCH_SIZE
        ):
            pass


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _timeouts()
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            "ix_care_team_events_organization_id_patient_id_id "
            "ON care_team_events (organization_id, patient_id, id)"
        )
        op.execute(
            "DROP INDEX CONCURRENTLY IF EXISTS ix_care_team_events_organization_id_patient_id_seq"
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS uq_care_team_events_organization_id_seq")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("DROP TRIGGER IF EXISTS number_care_team_event ON care_team_events")
    op.execute("DROP FUNCTION IF EXISTS number_care_team_event()")
    op.execute("ALTER TABLE care_team_events DROP COLUMN IF EXISTS seq")
    op.execute("DROP TABLE IF EXISTS care_team_event_sequences")
