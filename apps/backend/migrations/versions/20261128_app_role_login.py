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
from src.primary_index import UNIQUE_PRIMARY_INDEX

# pg_try_advisory_xact_lock key of the rule check: b"careteam" read as an integer.
RULE_CHECK_LOCK = int.from_bytes(b"careteam", "big")

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

# The stored result when fresh; otherwise one session recounts (the others, finding the
# advisory lock taken, answer the stored result): patients with several primaries,
# patients with a team but no primary, and whether the index is valid (NULL: missing).
RULE_STATUS = f"""
CREATE OR REPLACE FUNCTION careteam_rule_status(max_age_s double precision)
RETURNS TABLE (checked_at timestamptz, several_primaries bigint, without_primary bigint,
               index_valid boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM public.careteam_rule_checks AS c
        WHERE c.checked_at > clock_timestamp() - make_interval(secs => max_age_s)
    ) AND pg_try_advisory_xact_lock({RULE_CHECK_LOCK}) THEN
        INSERT INTO public.careteam_rule_checks AS c
            (checked_at, several_primaries, without_primary, index_valid)
        SELECT clock_timestamp(),
               count(*) FILTER (WHERE g.primaries > 1),
               count(*) FILTER (WHERE g.primaries = 0),
               (SELECT i.indisvalid
                FROM pg_index AS i
                JOIN pg_class AS r ON r.oid = i.indexrelid
                WHERE r.relname = '{UNIQUE_PRIMARY_INDEX}'
                  AND r.relnamespace = 'public'::regnamespace)
        FROM (
            SELECT count(*) FILTER (WHERE is_primary_provider) AS primaries
            FROM public.care_team_assignments
            GROUP BY organization_id, patient_id
        ) AS g
        ON CONFLICT (id) DO UPDATE SET
            checked_at = excluded.checked_at,
            several_primaries = excluded.several_primaries,
            without_primary = excluded.without_primary,
            index_valid = excluded.index_valid;
    END IF;
    RETURN QUERY
        SELECT c.checked_at, c.several_primaries, c.without_primary, c.index_valid
        FROM public.careteam_rule_checks AS c;
END
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
    op.execute(RULE_STATUS)
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
