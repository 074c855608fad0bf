"""Period changes in one read of the patient's periods, not two, and no needless update.

careteam_change_period (run by the trigger on care_team_assignments, twice for a
primary assignment: the previous primary demoted, the new one promoted) read the
patient's periods twice (the provider's open period, then the latest instant recorded
for the patient) and then always ran an UPDATE closing other open primary periods,
which finds none except on history from before the rule. Now one aggregate over the
patient's periods gives all three, and that UPDATE runs only when there is such a
period. Same behaviour, same signature (figures: docs/PERFORMANCE.md).

Online: CREATE OR REPLACE FUNCTION takes no lock a writer waits on for long.
downgrade() puts back the earlier revision's definition (v1).

Revision ID: 20261206_lean_period_changes
Revises: 20261128_care_team_periods
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.database_code import run_sql_file

revision: str = "20261206_lean_period_changes"
down_revision: str | None = "20261128_care_team_periods"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_sql_file("functions/careteam_change_period/v2.sql")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_sql_file("functions/careteam_change_period/v1.sql")
