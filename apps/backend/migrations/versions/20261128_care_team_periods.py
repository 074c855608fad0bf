"""Attribution over time: care team periods, reasons, panels with capacity, and the write
functions that keep them in step.

- `care_team_periods`: per (organization, patient, provider), when each membership held
  which role (`primary` or `secondary`), as a `tstzrange` (open while current), with who
  and why it began and ended. PostgreSQL forbids, by exclusion constraints (btree_gist),
  two overlapping primary periods of one patient, and two overlapping periods of one
  provider for one patient: the rule holds at every instant, not only now.
- Periods are kept in step with `care_team_assignments` by a trigger on it
  (careteam_keep_periods), in the same transaction as every change, whoever makes it:
  the service, the dedupe, `careteam check --fix`, manual SQL. So the current state
  always equals the open periods. The reason, note and actor of the change come from
  transaction-local settings (`careteam.reason`, `careteam.note`, `careteam.actor`) that
  the writer sets; a writer that sets none is recorded as `other`, by its login.
- Reasons are one vocabulary (`patient_request`, `provider_request`, `provider_left`,
  `panel_rebalance`, `data_correction`, `other`), on events and periods, with an
  optional note of at most 500 characters (events gain a `note`).
- `providers.panel_capacity` (NULL: no limit); an index on current primaries by provider
  for panel sizes.
- The service's writes are functions (careteam_assign_primary, careteam_add_secondary,
  careteam_remove_member, careteam_transfer_batch): each takes the patient lock first and
  the provider lock after it, as every writer does, so they cannot deadlock each other;
  a primary assignment locks its provider, so a panel's capacity holds under any
  concurrency. They raise errors with SQLSTATEs of class CT (see ERRORS below).

Online: one short transaction creates the table, the trigger and the functions; then
every patient's periods are built, in batches of patients under the service's patient
lock, from its events (its history) and its current assignments (whatever the events do
not explain opens at the assignment's time as a `data_correction`). A patient changed
meanwhile keeps its periods in step through the trigger, and its batch rebuilds them
from the events anyway. Re-running after a failure is safe.

downgrade() drops the functions, the trigger and the periods (the events hold their
history: applying this again rebuilds them); it keeps the notes and capacities written
meanwhile (`care_team_events.note`, `providers.panel_capacity`), which the earlier
release does not read, so that a rollback loses nothing.

Revision ID: 20261128_care_team_periods
Revises: 20261128_app_role_login
Create Date: 2026-11-28
"""

import itertools
import logging
import time
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261128_care_team_periods"
down_revision: str | None = "20261128_app_role_login"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_SIZE = 500  # patients per batch: a writer waits for at most one batch
PROGRESS_EVERY_S = 10
logger = logging.getLogger("alembic.runtime.migration")
CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
# The reasons and the note's limit as this revision created them: frozen here, so that
# a later change to the application's enums never changes what this revision does.
REASONS = (
    "('patient_request', 'provider_request', 'provider_left', 'panel_rebalance', "
    "'data_correction', 'other')"
)
NOTE_MAX_LENGTH = 500

# The write functions raise SQLSTATEs of class CT: CT001 patient not found, CT002
# provider not found, CT003 provider inactive, CT004 provider already primary, CT005
# provider not on the care team, CT006 panel full (src/services/care_team_service.py maps
# them to the service's errors).

CREATE_PERIODS = f"""
CREATE TABLE IF NOT EXISTS care_team_periods (
    organization_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    patient_id uuid NOT NULL,
    provider_id uuid NOT NULL,
    role text NOT NULL,
    valid tstzrange NOT NULL,
    started_by text NOT NULL,
    start_reason text NOT NULL,
    start_note text,
    ended_by text,
    end_reason text,
    end_note text,
    CONSTRAINT pk_care_team_periods PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_care_team_periods_organization_id_patient_id_patients
        FOREIGN KEY (organization_id, patient_id)
        REFERENCES patients (organization_id, id) ON DELETE RESTRICT,
    CONSTRAINT fk_care_team_periods_organization_id_provider_id_providers
        FOREIGN KEY (organization_id, provider_id)
        REFERENCES providers (organization_id, id) ON DELETE RESTRICT,
    CONSTRAINT ck_care_team_periods_role CHECK (role IN ('primary', 'secondary')),
    CONSTRAINT ck_care_team_periods_valid CHECK (NOT isempty(valid) AND NOT lower_inf(valid)),
    CONSTRAINT ck_care_team_periods_start_reason CHECK (start_reason IN {REASONS}),
    CONSTRAINT ck_care_team_periods_end_reason
        CHECK (end_reason IS NULL OR end_reason IN {REASONS}),
    CONSTRAINT ck_care_team_periods_ended CHECK (upper_inf(valid) = (end_reason IS NULL)),
    CONSTRAINT ck_care_team_periods_notes CHECK (
        coalesce(length(start_note), 0) <= {NOTE_MAX_LENGTH}
        AND coalesce(length(end_note), 0) <= {NOTE_MAX_LENGTH}),
    CONSTRAINT excl_care_team_periods_one_primary EXCLUDE USING gist
        (patient_id WITH =, organization_id WITH =, valid WITH &&) WHERE (role = 'primary'),
    CONSTRAINT excl_care_team_periods_one_per_provider EXCLUDE USING gist
        (patient_id WITH =, organization_id WITH =, provider_id WITH =, valid WITH &&)
)
"""

# The exclusion constraints' GiST indexes lead with patient_id. GiST splits a full page on
# its first column; led by organization_id (a few distinct values), writers' inserts at
# random patients made pages whose patient ranges overlapped, and every probe (each
# insert checks the constraint) read more pages as the table grew: at 1M periods with a
# writer running, the backfill's batches went from 60 to 700 ms. Led by patient_id they
# stay flat.

# The table is new and empty: its index is built in no time, with no writer to block.
PANEL_INDEX = """
-- A table created by this very migration, still empty:
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS ix_care_team_periods_organization_id_provider_id_patient_id
ON care_team_periods (organization_id, provider_id, patient_id)
"""

CREATE_TRIGGER = """
CREATE OR REPLACE TRIGGER careteam_keep_periods
AFTER INSERT OR DELETE OR UPDATE OF is_primary_provider, organization_id, patient_id,
    provider_id ON care_team_assignments
FOR EACH ROW EXECUTE FUNCTION careteam_keep_periods()
"""

# signature -> the file of its definition (sql/)
WRITE_FUNCTIONS = {
    "careteam_assign_primary(uuid, uuid, uuid, text, text, text)": (
        "functions/careteam_assign_primary/v1.sql"
    ),
    "careteam_add_secondary(uuid, uuid, uuid, text, text, text)": (
        "functions/careteam_add_secondary/v1.sql"
    ),
    "careteam_remove_member(uuid, uuid, uuid, text, text, text)": (
        "functions/careteam_remove_member/v1.sql"
    ),
    "careteam_transfer_batch(uuid, uuid, uuid, text, text, text, boolean, integer)": (
        "functions/careteam_transfer_batch/v1.sql"
    ),
}
HELPERS = {
    "careteam_begin_change(text, text, text)": "functions/careteam_begin_change/v1.sql",
    "careteam_change_period(uuid, uuid, uuid, text, timestamptz, text, text, text)": (
        "functions/careteam_change_period/v1.sql"
    ),
}


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.execute(CREATE_PERIODS)
    op.execute(PANEL_INDEX)
    op.execute("ALTER TABLE care_team_periods ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE care_team_periods FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON care_team_periods")
    op.execute(
        "CREATE POLICY tenant_isolation ON care_team_periods "
        f"USING (organization_id = {CURRENT_TENANT}) "
        f"WITH CHECK (organization_id = {CURRENT_TENANT})"
    )
    # Written only by the trigger, in the application's own transactions: never deleted.
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON care_team_periods TO {role}")
    for path in (*HELPERS.values(), *WRITE_FUNCTIONS.values()):
        run_sql_file(path)
    run_sql_file("functions/careteam_keep_periods/v1.sql")
    for signature in (*HELPERS, *WRITE_FUNCTIONS):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")

    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        # The tables writers use, each changed by a statement of its own (its own
        # transaction): one that held two at once could deadlock with a writer that
        # takes them in the other order (assignments, then events).
        op.execute("ALTER TABLE providers ADD COLUMN IF NOT EXISTS panel_capacity bigint")
        op.execute("ALTER TABLE care_team_events ADD COLUMN IF NOT EXISTS note text")
        op.execute(CREATE_TRIGGER)
        _constrain(
            "providers",
            "ck_providers_panel_capacity",
            "panel_capacity IS NULL OR panel_capacity >= 0",
        )
        _constrain(
            "care_team_events",
            "ck_care_team_events_note",
            f"note IS NULL OR length(note) <= {NOTE_MAX_LENGTH}",
        )
        # Events written from now on: reasons from the vocabulary (earlier ones were
        # free text, kept as they are: the constraint is not validated against them).
        op.execute(
            "-- A leftover of an interrupted run, added again below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            "ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_reason"
        )
        op.execute(
            "ALTER TABLE care_team_events ADD CONSTRAINT ck_care_team_events_reason "
            f"CHECK (reason IS NULL OR reason IN {REASONS}) NOT VALID"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            "ix_care_team_assignments_organization_id_provider_id_primary "
            "ON care_team_assignments (organization_id, provider_id) "
            "WHERE is_primary_provider"
        )
        _backfill(actor=f"migration:{revision}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def _constrain(table: str, name: str, condition: str) -> None:
    """A CHECK constraint added without a long lock: NOT VALID, then validated."""
    op.execute(
        "-- A leftover of an interrupted run, added again below:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
    )
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def _backfill(*, actor: str) -> None:
    run_sql_file("temporary/careteam_backfill_periods/v1.sql")
    first = "'00000000-0000-0000-0000-000000000000'"
    call = (
        "SELECT * FROM pg_temp.careteam_backfill_periods("
        "CAST(:org AS uuid), CAST(:patient AS uuid), :batch, :actor)"
    )
    if context.is_offline_mode():  # the statement once, for review and squawk
        op.execute(
            "SELECT * FROM pg_temp.careteam_backfill_periods("
            f"{first}, {first}, {BATCH_SIZE}, '{actor}')"
        )
        return
    connection = op.get_bind()
    total = int(connection.execute(text("SELECT count(*) FROM patients")).scalar_one())
    logger.info("periods: building them for %d patient(s), %d at a time", total, BATCH_SIZE)
    started = reported = time.monotonic()
    done = 0
    after = ("00000000-0000-0000-0000-000000000000",) * 2
    for batch in itertools.count(1):
        row = connection.execute(
            text(call),
            {"org": after[0], "patient": after[1], "batch": BATCH_SIZE, "actor": actor},
        ).one_or_none()
        if row is None:
            logger.info("periods: done, %d patient(s) in %.1f s", done, time.monotonic() - started)
            return
        done += row.patients
        after = (str(row.last_org), str(row.last_patient))
        if time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            logger.info(
                "periods: %d of %d patient(s) (%d%%), %.0f s",
                done,
                total,
                100 * done // max(total, 1),
                reported - started,
            )
        if batch & (batch - 1) == 0:
            # Each time the new table has doubled: statistics for its plans (and the
            # plans cached for the per-change function are made again, with them).
            op.execute("ANALYZE care_team_periods")


def downgrade() -> None:
    role = get_settings().app_db_role
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute(
            "DROP INDEX CONCURRENTLY IF EXISTS "
            "ix_care_team_assignments_organization_id_provider_id_primary"
        )
        op.execute("RESET lock_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("DROP TRIGGER IF EXISTS careteam_keep_periods ON care_team_assignments")
    op.execute("DROP FUNCTION IF EXISTS careteam_keep_periods()")
    for signature in (*WRITE_FUNCTIONS, *HELPERS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    # The notes and capacities written meanwhile stay (columns the earlier release does
    # not read): a rollback loses nothing. Their checks go: the earlier release writes
    # free-text reasons.
    op.execute("ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_reason")
    op.execute("ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_note")
    op.execute("ALTER TABLE providers DROP CONSTRAINT IF EXISTS ck_providers_panel_capacity")
    op.execute(f"REVOKE ALL ON care_team_periods FROM {role}")
    op.execute("DROP TABLE IF EXISTS care_team_periods")
