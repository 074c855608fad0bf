"""The application role logs in as itself, with only the privileges it uses.

Application connections used to log in as the owner (a superuser) and switch to the
application role, so `RESET ROLE` on one of them regained superuser. Now:

- APP_DB_ROLE (careteam_app) is a LOGIN role; the API connects as it directly (its
  password, if the server asks for one, is the operator's to set: see the runbook).
- It keeps only what it uses: patients and providers SELECT, INSERT, UPDATE (UPDATE also
  for the row locks the service takes), care team assignments also DELETE, events SELECT
  and INSERT, the event counters SELECT, INSERT, UPDATE; nothing on organizations; no
  CREATE on the schema.
- Readiness reads alembic_version (SELECT granted); the rule's metrics come from
  careteam_rule_status(), a SECURITY DEFINER function that answers three counts and no
  tenant data, so the API process needs no owner connection at all.

downgrade() restores the earlier privileges (reading alembic_version stays allowed,
so readiness can say the schema is behind). The role stays a LOGIN role: it is
cluster-wide and may serve other databases.

Revision ID: 20261128_app_role_login
Revises: 20261128_event_sequence
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.rule import UNIQUE_PRIMARY_INDEX

revision: str = "20261128_app_role_login"
down_revision: str | None = "20261128_event_sequence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One scan of the assignments: patients with several primaries, patients with a team but
# no primary, and whether the index is valid (NULL: missing). Counts only.
RULE_STATUS = f"""
CREATE OR REPLACE FUNCTION careteam_rule_status()
RETURNS TABLE (several_primaries bigint, without_primary bigint, index_valid boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE g.primaries > 1),
           count(*) FILTER (WHERE g.primaries = 0),
           (SELECT i.indisvalid
            FROM pg_index AS i
            JOIN pg_class AS c ON c.oid = i.indexrelid
            WHERE c.relname = '{UNIQUE_PRIMARY_INDEX}'
              AND c.relnamespace = 'public'::regnamespace)
    FROM (
        SELECT count(*) FILTER (WHERE is_primary_provider) AS primaries
        FROM public.care_team_assignments
        GROUP BY organization_id, patient_id
    ) AS g
$$
"""


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute(f"ALTER ROLE {role} LOGIN")
    op.execute(f"REVOKE ALL ON organizations FROM {role}")
    op.execute(f"REVOKE DELETE ON patients, providers FROM {role}")
    op.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT SELECT ON alembic_version TO {role}")
    op.execute(RULE_STATUS)
    op.execute("REVOKE ALL ON FUNCTION careteam_rule_status() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION careteam_rule_status() TO {role}")


def downgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("DROP FUNCTION IF EXISTS careteam_rule_status()")
    # SELECT on alembic_version stays: readiness then says which revision the schema is
    # at, instead of "permission denied".
    op.execute(f"GRANT DELETE ON patients, providers TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON organizations TO {role}")
