"""Key and client management over HTTP: the application role's only way to it.

The application role has no privilege on `api_keys` or `smart_clients` and gets none
here. It gets EXECUTE on six SECURITY DEFINER functions, one per operation of
`/v1/api-keys` and `/v1/clients` (issue, list, revoke a key; register, list, revoke a
client), each taking the organization and the caller's credential (the hash of its key
or token) and refusing, inside PostgreSQL, a caller that is not live for the
organization (SQLSTATE CT007) or does not hold `careteam/admin` (CT012): the HTTP
layer's 403 has the database behind it. They share that check,
careteam_admin_caller, which only they may run (no EXECUTE for anyone else).

Online: new functions only, no table is touched (nothing is locked but the catalog, under
lock_timeout). Re-running after a failure is safe (one transaction).

downgrade() drops the seven functions; keys and clients made over HTTP stay (they are
rows like those `careteam key create` and `careteam client register` make).

Revision ID: 20261207_credential_admin
Revises: 20261207_smart_clients
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import run_sql_file

revision: str = "20261207_credential_admin"
down_revision: str | None = "20261207_smart_clients"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALLER = "careteam_admin_caller(uuid, text)"
# Each function the application role may run: its file, its signature.
GRANTED = {
    "functions/careteam_admin_issue_key/v1.sql": (
        "careteam_admin_issue_key(uuid, text, text, text, text[])"
    ),
    "functions/careteam_admin_keys/v1.sql": (
        "careteam_admin_keys(uuid, text, timestamptz, uuid, integer)"
    ),
    "functions/careteam_admin_revoke_key/v1.sql": "careteam_admin_revoke_key(uuid, text, uuid)",
    "functions/careteam_admin_register_client/v1.sql": (
        "careteam_admin_register_client(uuid, text, text, jsonb, text, text[])"
    ),
    "functions/careteam_admin_clients/v1.sql": (
        "careteam_admin_clients(uuid, text, timestamptz, uuid, integer)"
    ),
    "functions/careteam_admin_revoke_client/v1.sql": (
        "careteam_admin_revoke_client(uuid, text, uuid)"
    ),
}


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    role = get_settings().app_db_role
    run_sql_file("functions/careteam_admin_caller/v1.sql")
    op.execute(f"REVOKE ALL ON FUNCTION {CALLER} FROM PUBLIC")
    for path, function in GRANTED.items():
        run_sql_file(path)
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    for function in reversed(GRANTED.values()):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute(f"DROP FUNCTION IF EXISTS {CALLER}")
