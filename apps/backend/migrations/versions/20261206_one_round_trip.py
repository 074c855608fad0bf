"""Requests in fewer round trips: the key check travels with the tenant, and the care
team is read by one statement.

- careteam_enter(org, key_hash): the first statement of every transaction the service
  runs. It sets the tenant (transaction-locally, as set_config(..., true) did) and, when
  the request came with an API key, checks in the same statement that the key is still
  live and belongs to that organization (SQLSTATE CT007 otherwise: the class of the
  write functions' own errors; 28000 would be taken for PostgreSQL's refusal of a
  login). The API keeps the
  key's organization in memory after its first use; this check is what makes a revoked
  key fail on its very next request anyway, with no round trip of its own.
- careteam_care_team(org, patient, key_hash): careteam_enter, then the current care
  team (the statement that was SELECT_TEAM in the service). A read of the team is this
  one statement in an implicit transaction: one round trip instead of four (key, BEGIN
  with the tenant, the query, COMMIT). Writes call it for the team they return.

Both are SECURITY INVOKER, so row-level security applies to their queries as the
application role, and neither has a SET clause: a function's SET clause would undo the
tenant it sets when it returns. Names are schema-qualified instead.

Online: CREATE FUNCTION takes no lock on a table. downgrade() drops both; the
release before this one does not call them.

Revision ID: 20261206_one_round_trip
Revises: 20261206_records_and_sync
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261206_one_round_trip"
down_revision: str | None = "20261206_records_and_sync"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENTER = "public.careteam_enter(uuid, text)"
CARE_TEAM = "public.careteam_care_team(uuid, uuid, text)"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    role = get_settings().app_db_role
    run_sql_file("functions/careteam_enter/v1.sql")
    run_sql_file("functions/careteam_care_team/v1.sql")
    for signature in (ENTER, CARE_TEAM):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute(f"DROP FUNCTION IF EXISTS {CARE_TEAM}")
    op.execute(f"DROP FUNCTION IF EXISTS {ENTER}")
