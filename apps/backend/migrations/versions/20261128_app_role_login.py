"""The application role logs in as itself, with only the privileges it uses.

Application connections used to log in as the owner (a superuser) and switch to the
application role, so `RESET ROLE` on one of them regained superuser. Now:

- APP_DB_ROLE (careteam_app) is a LOGIN role; the API connects as it directly (its
  password, if the server asks for one, is the operator's to set: see the runbook).
- It keeps only what it uses: patients and providers SELECT, INSERT, UPDATE (UPDATE also
  for the row locks the service takes), care team assignments also DELETE, events SELECT
  and INSERT, the event counters SELECT, INSERT, UPDATE; nothing on organizations; no
  CREATE on the schema, no temporary tables (TEMPORARY on the database is revoked from
  PUBLIC; the owner, a superuser or BYPASSRLS role, keeps what the dedupe needs).
- Readiness reads alembic_version (SELECT granted); the rule's metrics come from
  careteam_rule_status(max_age_s), a SECURITY DEFINER function that answers three
  counts and no tenant data, so the API process needs no owner connection at all. It
  answers the last check's result, stored in careteam_rule_checks, and recounts only
  when that is older than max_age_s and no other session is recounting (an advisory
  lock): however many API processes ask, one scan per database per period.

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
from src.database_code import run_sql_file

revision: str = "20261128_app_role_login"
down_revision: str | None = "20261128_event_sequence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The last check of the rule, one row: what every API process publishes in /metrics.
CREATE_CHECKS = """
CREATE TABLE IF NOT EXISTS careteam_rule_checks (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    checked_at timestamptz NOT NULL,
    several_primaries bigint NOT NULL,
    without_primary bigint NOT NULL,
    index_valid boolean
)
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
    # No temporary tables either (PUBLIC has TEMP on every database by default); the
    # owner keeps it by name (the dedupe's batches live in a temporary table).
    op.execute(
        "DO $$ BEGIN "
        "EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), "
        "current_user); "
        "EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); "
        "END $$"
    )
    op.execute(f"GRANT SELECT ON alembic_version TO {role}")
    op.execute(CREATE_CHECKS)
    run_sql_file("functions/careteam_rule_status/v1.sql")
    op.execute("REVOKE ALL ON FUNCTION careteam_rule_status(double precision) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION careteam_rule_status(double precision) TO {role}")


def downgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("DROP FUNCTION IF EXISTS careteam_rule_status(double precision)")
    op.execute("DROP TABLE IF EXISTS careteam_rule_checks")
    op.execute(
        "DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', "
        "current_database()); END $$"
    )
    # SELECT on alembic_version stays: readiness then says which revision the schema is
    # at, instead of "permission denied".
    op.execute(f"GRANT DELETE ON patients, providers TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON organizations TO {role}")
