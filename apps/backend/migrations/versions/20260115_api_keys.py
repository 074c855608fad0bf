"""API keys: each belongs to one organization and decides the tenant of a request.

Only a SHA-256 hash of the key is stored (the keys are 256-bit random tokens, so a slow
password hash adds nothing). Revoking sets revoked_at; a revoked key stops working at
once because every request looks its key up.

The table is under row-level security like every tenant table. The application role
cannot read it at all: it can only ask authenticate_api_key(hash), a SECURITY DEFINER
function owned by the migrating role, which answers (key id, organization id) for a
live key and nothing for anything else. Keys are created and revoked as the owner
(`careteam org create`, `careteam key create|revoke`).

Revision ID: 20260115_api_keys
Revises: 20260114_unique_primary
Create Date: 2026-01-15
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from src.config import get_settings

revision: str = "20260115_api_keys"
down_revision: str | None = "20260114_unique_primary"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"


def upgrade() -> None:
    role = get_settings().app_db_role
    op.create_table(
        "api_keys",
        sa.Column(
            "id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_api_keys_organization_id_organizations",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint(
            "key_hash", "organization_id", name="uq_api_keys_key_hash_organization_id"
        ),
    )
    op.execute("ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE api_keys FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON api_keys "
        f"USING (organization_id = {CURRENT_TENANT}) "
        f"WITH CHECK (organization_id = {CURRENT_TENANT})"
    )
    op.execute("""
        CREATE FUNCTION authenticate_api_key(p_key_hash text)
        RETURNS TABLE (api_key_id uuid, organization_id uuid)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $$
            SELECT k.id, k.organization_id
            FROM public.api_keys AS k
            WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
        $$
    """)
    op.execute("REVOKE ALL ON FUNCTION authenticate_api_key(text) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION authenticate_api_key(text) TO {role}")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS authenticate_api_key(text)")
    op.drop_table("api_keys")
