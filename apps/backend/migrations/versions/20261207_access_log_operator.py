"""The access log records an operator's commands too (`careteam export`), which act with
no API key and no SMART client.

- `access_log.operator` text: who ran the command (`user@host` of the shell), on an
  entry that has neither `api_key_id` nor `client_id`.
- `ck_access_log_who_or_operator` replaces `ck_access_log_who`: an entry names an API
  key, a SMART client, or an operator (and an operator's entry names no credential).
- careteam_record_operator_access(...)
  (sql/functions/careteam_record_operator_access/v1.sql): an operator's entry, as
  careteam_record_access writes a credential's (which is unchanged: servers of the
  release before keep calling it while this one rolls out).

Online: a nullable column without a default (a moment's lock, no rewrite); the new
check is added NOT VALID, then validated (reading the table without blocking its
writers), and only then is the old one dropped, so no moment goes unchecked.

downgrade() drops the function, puts `ck_access_log_who` back NOT VALID (enforced on
new entries, as in the release before; the operators' entries already written stay, as
an append-only log keeps them) and drops the new check; `operator` stays (it says who
made those entries; the release before neither reads nor writes it).

Revision ID: 20261207_access_log_operator
Revises: 20261207_bulk_export
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_access_log_operator"
down_revision: str | None = "20261207_bulk_export"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_OPERATOR = (
    "careteam_record_operator_access(uuid, uuid, text, text, text, text, text[], integer, "
    "integer, uuid[])"
)
WHO = "ck_access_log_who"
WHO_OR_OPERATOR = "ck_access_log_who_or_operator"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE access_log ADD COLUMN IF NOT EXISTS operator text")
    run_sql_file("functions/careteam_record_operator_access/v1.sql")
    role = get_settings().app_db_role
    op.execute(f"REVOKE ALL ON FUNCTION {RECORD_OPERATOR} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {RECORD_OPERATOR} TO {role}")
    with op.get_context().autocommit_block():
        # Never queue for long behind (and so in front of) the site's own queries.
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        op.execute(
            "-- A leftover of an interrupted run, added again below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            f"ALTER TABLE access_log DROP CONSTRAINT IF EXISTS {WHO_OR_OPERATOR}"
        )
        op.execute(
            f"ALTER TABLE access_log ADD CONSTRAINT {WHO_OR_OPERATOR} CHECK ("
            "(operator IS NULL AND (api_key_id IS NOT NULL OR client_id IS NOT NULL)) "
            "OR (operator IS NOT NULL AND api_key_id IS NULL AND client_id IS NULL "
            "AND length(operator) BETWEEN 1 AND 200)) NOT VALID"
        )
        op.execute(f"ALTER TABLE access_log VALIDATE CONSTRAINT {WHO_OR_OPERATOR}")
        op.execute(
            "-- Replaced by the check above, validated already:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            f"ALTER TABLE access_log DROP CONSTRAINT IF EXISTS {WHO}"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {RECORD_OPERATOR}")
    op.execute(
        "-- A leftover of an interrupted run, added again below:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE access_log DROP CONSTRAINT IF EXISTS {WHO}"
    )
    op.execute(
        f"ALTER TABLE access_log ADD CONSTRAINT {WHO} "
        "CHECK (api_key_id IS NOT NULL OR client_id IS NOT NULL) NOT VALID"
    )
    op.execute(
        "-- Added by this revision; the release before has the check above instead:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE access_log DROP CONSTRAINT IF EXISTS {WHO_OR_OPERATOR}"
    )
