"""Scopes on API keys (SMART v2 syntax): what each key may do.

- `api_keys.scopes` text[] NOT NULL, default `{system/*.cruds,careteam/admin}`: every key
  made before this revision keeps what it could do (every read and write, and the
  administrative scope), and so does a key the release before inserts during a deploy.
  The application always writes a key's scopes itself (src/scopes.py; a new key gets
  `system/*.cruds` unless it is given others).
- authenticate_api_key v2 (sql/functions/authenticate_api_key/v2.sql) returns the key's
  scopes as well, in the same one statement as before. Its result type changes, so the
  function is dropped and created again, with its grant, in one transaction: a session
  of the application waits for the commit (under lock_timeout), never sees it missing.

Online: the column has a constant default, so PostgreSQL 11+ adds it without rewriting
the table (a moment's ACCESS EXCLUSIVE lock on api_keys, under lock_timeout).

downgrade() puts authenticate_api_key v1 back and drops the column (scopes given since
are lost; the release before gives every key full access).

Revision ID: 20261207_key_scopes
Revises: 20261207_fhir_reads
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_key_scopes"
down_revision: str | None = "20261207_fhir_reads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As this revision made them: frozen here, never the application's constants.
EXISTING_KEYS = "'{system/*.cruds,careteam/admin}'::text[]"
AUTHENTICATE = "authenticate_api_key(text)"


def _grant_authenticate() -> None:
    role = get_settings().app_db_role
    op.execute(f"REVOKE ALL ON FUNCTION {AUTHENTICATE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {AUTHENTICATE} TO {role}")


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        f"ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS scopes text[] DEFAULT {EXISTING_KEYS} "
        "NOT NULL"
    )
    op.execute(
        "-- Created again at once, in this transaction, with its new result type:\n"
        "-- squawk-ignore ban-drop-function\n"
        f"DROP FUNCTION IF EXISTS {AUTHENTICATE}"
    )
    run_sql_file("functions/authenticate_api_key/v2.sql")
    _grant_authenticate()


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {AUTHENTICATE}")
    run_sql_file("functions/authenticate_api_key/v1.sql")
    _grant_authenticate()
    op.execute(
        "-- Added by this revision; the earlier release does not read it:\n"
        "-- squawk-ignore ban-drop-column\n"
        "ALTER TABLE api_keys DROP COLUMN IF EXISTS scopes"
    )
