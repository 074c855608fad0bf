"""Row-level security on every tenant table, and the application role it applies to.

Every table with organization_id (and organizations itself, on its id) gets RLS
ENABLEd and FORCEd, with one policy: a row is visible and writable only while
`app.current_organization_id` names its organization. With no tenant set, nothing is
visible. The service sets the tenant with set_config(..., true) in each transaction.

Application traffic runs as APP_DB_ROLE (default careteam_app): no superuser, no
ownership, so the policies apply to it. care_team_events is append-only for it (no
UPDATE or DELETE). The owner that runs migrations and the cross-tenant diagnostic must be
superuser or have BYPASSRLS; FORCE makes a plain owner see nothing.

api_keys is covered like the others, but the application role gets no privilege on
it at all: it can only call authenticate_api_key(hash), a SECURITY DEFINER function
owned by the migrating role, which answers (key id, organization id) for a live key and
nothing for anything else. Keys are created and revoked as the owner (`careteam org
create`, `careteam key create|revoke`).

The role is cluster-wide and may serve other databases, so downgrade() keeps it and
only revokes its privileges here.

Revision ID: 20260114_rls_coverage
Revises: 20260113_initial_schema
Create Date: 2026-01-14
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20260114_rls_coverage"
down_revision: str | None = "20260113_initial_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"

# table -> (tenant column, privileges of the application role)
TENANT_TABLES = {
    "organizations": ("id", "SELECT, INSERT"),
    "patients": ("organization_id", "SELECT, INSERT, UPDATE, DELETE"),
    "providers": ("organization_id", "SELECT, INSERT, UPDATE, DELETE"),
    "care_team_assignments": ("organization_id", "SELECT, INSERT, UPDATE, DELETE"),
    "care_team_events": ("organization_id", "SELECT, INSERT"),
    "api_keys": ("organization_id", None),
}


def upgrade() -> None:
    # Never queue for long behind (and so in front of) the site's own queries.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    role = get_settings().app_db_role
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS;
            END IF;
            -- The owner login may switch to the role at connect (see src/db.py).
            IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                EXECUTE format('GRANT {role} TO %I', current_user);
            END IF;
        END
        $$
    """)
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    for table, (column, privileges) in TENANT_TABLES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({column} = {CURRENT_TENANT}) "
            f"WITH CHECK ({column} = {CURRENT_TENANT})"
        )
        if privileges:
            op.execute(f"GRANT {privileges} ON {table} TO {role}")
    run_sql_file("functions/authenticate_api_key/v1.sql")
    op.execute("REVOKE ALL ON FUNCTION authenticate_api_key(text) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION authenticate_api_key(text) TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    role = get_settings().app_db_role
    op.execute("DROP FUNCTION IF EXISTS authenticate_api_key(text)")
    for table in reversed(TENANT_TABLES):
        op.execute(f"REVOKE ALL ON {table} FROM {role}")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {role}")
