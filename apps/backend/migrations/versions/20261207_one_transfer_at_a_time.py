"""One panel transfer at a time per provider.

careteam_claim_transfer(org, from, to) takes a session-level advisory lock on each of
the two providers, or raises CT011 (409 transfer_in_progress) when another transfer
holds either: two transfers that share a provider no longer interleave (opposite ones
bounced patients between the two, and wrote spurious attribution history).

Online: CREATE FUNCTION takes no lock on a table. downgrade() drops it; the release
before does not call it.

Revision ID: 20261207_one_transfer_at_a_time
Revises: 20261207_cursor_secret
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_one_transfer_at_a_time"
down_revision: str | None = "20261207_cursor_secret"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIM_TRANSFER = "public.careteam_claim_transfer(uuid, uuid, uuid)"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_sql_file("functions/careteam_claim_transfer/v1.sql")
    op.execute(f"REVOKE ALL ON FUNCTION {CLAIM_TRANSFER} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {CLAIM_TRANSFER} TO {get_settings().app_db_role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {CLAIM_TRANSFER}")
