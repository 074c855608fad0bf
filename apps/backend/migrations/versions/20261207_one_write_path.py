"""One write path: a care team change runs the same way with or without an
Idempotency-Key, and every key is claimed and its result stored by the database's code.

- careteam_claim_key(org, key, fingerprint, owned) and careteam_store_result(org, key,
  result, owned): the one implementation of Idempotency-Keys. A key is claimed first in
  the write's transaction and its result (the service's own result, as JSON, in the new
  column `idempotency_keys.result`) stored last, so the change and its result commit
  together; an operation of several transactions (a panel transfer) owns its claim
  through a session-level advisory lock, and a retry takes the claim over as soon as
  the owner's session is gone, never while it lives.
- careteam_change_team(...): careteam_write's change, plus the key's claim and stored
  result, in its one statement: the service sends it alone whether or not the request
  has a key (the key made the write an explicit transaction of five round trips).
  careteam_write stays, unchanged, for the release before during a rolling deploy.

Rows written by the release before (a stored HTTP response, or an in-progress claim
whose body is its owner's token) are read as that release wrote them: a stored response
cannot be replayed by this release and is refused (CT009), an in-progress claim is taken
over after 15 minutes as before. Rows this release writes look in progress to the
release before (status 0), which answers them 409 until the deploy is done.

Online: one short transaction. The new column is nullable with no default (no table
rewrite), under a 5 s lock timeout; CREATE OR REPLACE FUNCTION takes no lock a writer
waits on. downgrade() drops the three functions and the column.

Revision ID: 20261207_one_write_path
Revises: 20261206_writes_in_one_statement
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_one_write_path"
down_revision: str | None = "20261206_writes_in_one_statement"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIM_KEY = "public.careteam_claim_key(uuid, text, text, boolean)"
STORE_RESULT = "public.careteam_store_result(uuid, text, jsonb, boolean)"
CHANGE_TEAM = (
    "public.careteam_change_team(text, uuid, uuid, uuid, text, text, text, bigint[], text, "
    "uuid, text, text)"
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS result jsonb")
    run_sql_file("functions/careteam_claim_key/v1.sql")
    run_sql_file("functions/careteam_store_result/v1.sql")
    run_sql_file("functions/careteam_change_team/v1.sql")
    role = get_settings().app_db_role
    for signature in (CLAIM_KEY, STORE_RESULT, CHANGE_TEAM):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    for signature in (CHANGE_TEAM, STORE_RESULT, CLAIM_KEY):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN IF EXISTS result")
