"""FHIR reads: the application role reads its own organization, and a care team is read
in one statement.

- The application role may read three columns of `organizations` (id, name, created_at),
  under the table's row-level security (its policy, from 20260114_rls_coverage, shows a
  session its own organization only): FHIR's Organization read, which every Patient's
  and CareTeam's managingOrganization names. Revision 20261128_app_role_login took every
  privilege on the table; nothing else of it becomes readable.
- careteam_fhir_care_teams(org, key_hash, ids) (sql/functions/careteam_fhir_care_teams/
  v1.sql): careteam_enter, then the CareTeams of these patients with their periods, in one
  statement: the FHIR CareTeam read and the search by patient or id alone, in one round
  trip as the /v1 care team read (careteam_care_team).

Online: a GRANT and a new function (moments' locks on catalog entries), under
lock_timeout.

downgrade() drops the function and revokes the grant (the release before uses neither).

Revision ID: 20261207_fhir_reads
Revises: 20261207_record_snapshots
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_fhir_reads"
down_revision: str | None = "20261207_record_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CARE_TEAMS = "careteam_fhir_care_teams(uuid, text, uuid[])"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    role = get_settings().app_db_role
    op.execute(f"GRANT SELECT (id, name, created_at) ON organizations TO {role}")
    run_sql_file("functions/careteam_fhir_care_teams/v1.sql")
    op.execute(f"REVOKE ALL ON FUNCTION {CARE_TEAMS} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {CARE_TEAMS} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    role = get_settings().app_db_role
    op.execute(f"DROP FUNCTION IF EXISTS {CARE_TEAMS}")
    op.execute(f"REVOKE SELECT (id, name, created_at) ON organizations FROM {role}")
