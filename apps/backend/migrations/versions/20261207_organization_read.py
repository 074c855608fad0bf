"""The application role reads its own organization's id, name and creation time (FHIR's
Organization read: every Patient and CareTeam names its managingOrganization).

Revision 20261128_app_role_login took every privilege on `organizations` from the
application role. This grants back SELECT on three columns only (id, name, created_at),
under the table's row-level security (its policy, from 20260114_rls_coverage, shows a
session its own organization only): another organization's row stays invisible, and
nothing else of the table is readable.

Online: a GRANT (a moment's lock on the table's catalog entry), under lock_timeout.

downgrade() revokes it (the release before does not read organizations).

Revision ID: 20261207_organization_read
Revises: 20261207_record_snapshots
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings

revision: str = "20261207_organization_read"
down_revision: str | None = "20261207_record_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    role = get_settings().app_db_role
    op.execute(f"GRANT SELECT (id, name, created_at) ON organizations TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    role = get_settings().app_db_role
    op.execute(f"REVOKE SELECT (id, name, created_at) ON organizations FROM {role}")
