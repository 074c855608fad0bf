"""The key that seals cursors: a cursor belongs to one organization and one list.

`careteam_secrets` holds one row, `cursor`: 32 random bytes, made here once. The API
signs every cursor it issues with it (HMAC-SHA256 over the organization, the list and
the position: src/values.py), so a cursor from another organization or another list,
a forged one and one of the release before are refused (422 invalid_cursor) instead of
being read as a position. The application role may read it, and nothing else; it holds
no tenant data (no row-level security), only the key.

Online: a new table of one row, in one short transaction. downgrade() drops it (the
release before issues and reads cursors of its own, unsigned).

Revision ID: 20261207_cursor_secret
Revises: 20261207_one_write_path
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings

revision: str = "20261207_cursor_secret"
down_revision: str | None = "20261207_one_write_path"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("""
CREATE TABLE IF NOT EXISTS careteam_secrets (
    name text NOT NULL,
    value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_careteam_secrets PRIMARY KEY (name),
    CONSTRAINT ck_careteam_secrets_value CHECK (length(value) >= 32)
)""")
    # 32 bytes from two version-4 UUIDs (gen_random_uuid: a cryptographic random source).
    op.execute("""
INSERT INTO careteam_secrets (name, value)
VALUES ('cursor', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                         'hex'))
ON CONFLICT (name) DO NOTHING""")
    op.execute("REVOKE ALL ON careteam_secrets FROM PUBLIC")
    op.execute(f"GRANT SELECT ON careteam_secrets TO {get_settings().app_db_role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TABLE IF EXISTS careteam_secrets")
