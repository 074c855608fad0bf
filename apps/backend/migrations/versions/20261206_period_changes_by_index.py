"""Period changes that read the patient's open periods and recent ones, not its whole
history.

careteam_change_period (run by the trigger on care_team_assignments) aggregated every
period the patient ever had, to find the membership's open period, whether another
primary is open, and the latest instant recorded for the patient (a patient's periods
never run backwards). So a write cost in proportion to the patient's history: 1.17 ms
per assignment at 1,000 periods, 2.42 ms at 4,000, where this definition takes 0.80 and
0.90 ms (bench/patient_history.py, figures in docs/PERFORMANCE.md).

Now it reads, through the exclusion constraints' GiST index (which serves both
conditions):

1. the open periods (`valid @> 'infinity'`): the membership's, another open primary,
   and L, the latest start among them;
2. the periods that reach past L (`valid && [L, infinity)`): only they can hold a start
   or an end later than L, so the latest instant is the greatest of L and their bounds.

A patient with no open period (its team emptied) reads its whole history, as before:
that is rare. Same behaviour, same signature; the earlier revision's tests of the
never-backwards rule run against it.

Online: CREATE OR REPLACE FUNCTION takes no lock a writer waits on for long.
downgrade() puts back 20261206_lean_period_changes's definition (v2).

Revision ID: 20261206_period_changes_by_index
Revises: 20261206_one_round_trip
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.database_code import run_sql_file

revision: str = "20261206_period_changes_by_index"
down_revision: str | None = "20261206_one_round_trip"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_sql_file("functions/careteam_change_period/v3.sql")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_sql_file("functions/careteam_change_period/v2.sql")
