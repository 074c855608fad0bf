"""Care team writes, and the read as of an instant, in one statement each; events last.

Inserting an event takes the organization's event counter (care_team_event_sequences,
a row lock held until COMMIT, so that event numbers follow commit order with no gaps).
Every writer of the organization queues on that row: what a write does between its
first event and the end of its transaction, no other writer of the organization can do
at the same time. A primary assignment held it through the promotion (the new
primary's period change, by the trigger), then two round trips to the application (the
team read, then COMMIT), whose time grows with the application's load.

1. careteam_assign_primary and careteam_transfer_batch record their events after their
   changes, not between them: same events, same order, same numbers.
2. careteam_write(p_op, ...) runs one write (`assign_primary`, `add_secondary`,
   `remove_member`, through the functions above) and returns the team after it, as
   careteam_care_team reads it. It sets the tenant and checks the request's API key
   itself (careteam_enter), and checks the team's version when the caller names one
   (If-Match: the patient locked first, then the version read; CT008 if it moved on).
   So a write is one statement, sent alone, in an implicit transaction: it commits
   where the statement ends, with no round trip to the application under the counter.
   (A write with an Idempotency-Key still runs in an explicit transaction: the key is
   claimed before it and the response stored after it.)
3. `care_team_events.write_id`: the id the service gives each write (careteam_write
   sets `careteam.write_id` for its transaction, and the column's default takes it), so
   that after a connection lost during a write, whether that very write committed is a
   fact to look up, not a guess from the team's state: a write sent alone may be lost
   before PostgreSQL ran it, when the team may already look as it would after it (the
   provider to remove was never on the team). careteam_write itself looks for its id
   under the patient's lock, and does nothing more if it is there: an attempt lost to
   the application that runs late, after the attempt that replaced it, is not applied
   twice. NULL for events written otherwise; indexed where set (built concurrently).
4. careteam_care_team_as_of(org, patient, instant, key hash): the team as it stood at an
   instant, one statement like careteam_care_team (it was BEGIN with the tenant, the
   query and COMMIT: three round trips for a read).

Figures: docs/PERFORMANCE.md. The earlier functions stay, unchanged in what they return:
the release before calls them during a rolling deploy.

Online: one short transaction, then a concurrent index build. The new column (nullable,
then its default: neither rewrites the table) takes the events' table lock, with a 5 s
lock timeout (if a long transaction holds the table, the migration stops having changed
nothing, and can be run again), until the functions are replaced, a matter of
milliseconds; CREATE OR REPLACE FUNCTION takes no lock a writer waits on. The index on
write ids is built CONCURRENTLY (it holds no row yet, but the build reads the table
once). downgrade() drops the index, careteam_write, careteam_care_team_as_of and the
column, and puts back 20261128_care_team_periods's definitions (v1).

Revision ID: 20261206_writes_in_one_statement
Revises: 20261206_period_changes_by_index
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import drop_invalid_index, run_sql_file

revision: str = "20261206_writes_in_one_statement"
down_revision: str | None = "20261206_period_changes_by_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WRITE = "careteam_write(text, uuid, uuid, uuid, text, text, text, bigint[], text, uuid)"
WRITE_ID = "nullif(current_setting('careteam.write_id', true), '')::uuid"
WRITE_ID_INDEX = "ix_care_team_events_organization_id_write_id"

CARE_TEAM_AS_OF = "careteam_care_team_as_of(uuid, uuid, timestamptz, text)"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # The one table this transaction locks: first, for the moment the rest takes.
    op.execute("ALTER TABLE care_team_events ADD COLUMN IF NOT EXISTS write_id uuid")
    op.execute(f"ALTER TABLE care_team_events ALTER COLUMN write_id SET DEFAULT {WRITE_ID}")
    run_sql_file("functions/careteam_assign_primary/v2.sql")
    run_sql_file("functions/careteam_transfer_batch/v2.sql")
    run_sql_file("functions/careteam_write/v1.sql")
    run_sql_file("functions/careteam_care_team_as_of/v1.sql")
    for signature in (WRITE, CARE_TEAM_AS_OF):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {get_settings().app_db_role}")
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        drop_invalid_index(WRITE_ID_INDEX)
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {WRITE_ID_INDEX} "
            "ON care_team_events (organization_id, write_id) WHERE write_id IS NOT NULL"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {WRITE_ID_INDEX}")
        op.execute("RESET lock_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {CARE_TEAM_AS_OF}")
    op.execute(f"DROP FUNCTION IF EXISTS {WRITE}")
    run_sql_file("functions/careteam_assign_primary/v1.sql")
    run_sql_file("functions/careteam_transfer_batch/v1.sql")
    op.execute("ALTER TABLE care_team_events DROP COLUMN IF EXISTS write_id")
