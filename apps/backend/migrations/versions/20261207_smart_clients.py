"""SMART Backend Services: registered clients, the assertions they used, access tokens.

- `smart_clients`: a backend service registered with `careteam client register`: its
  organization, name, public keys (`jwks`, a JWK Set) or the URL to fetch them from
  (`jwks_url`), exactly one of the two, its scopes (SMART v2), when it was registered and
  revoked. Keyed (organization_id, id); an index on id alone finds a client by the id it
  sends.
- `smart_client_assertions`: the `jti` of every client assertion the token endpoint
  accepted, per client, until the assertion's `exp` has passed. Its primary key
  (organization_id, client_id, jti) is what keeps two concurrent requests with one jti
  from both getting a token.
- `api_keys.client_id` and `api_keys.expires_at`, nullable and without default (no table
  rewrite): an access token is a row of api_keys, stored as a hash like a key, with its
  client, the scopes granted and its expiry; an API key has neither. A foreign key
  (organization_id, client_id) -> smart_clients keeps a token in its client's
  organization; a partial index on (organization_id, client_id) serves revoking a
  client's tokens.
- authenticate_api_key v3 (sql/functions/authenticate_api_key/v3.sql): as v2, and a token
  counts only until its expiry and while its client is not revoked; it also returns
  client_id and expires_at. Its result type changes: dropped and created again with its
  grant in one transaction (an application session waits for the commit, under
  lock_timeout, and never sees it missing).
- smart_client_keys v1 and smart_issue_token v1: SECURITY DEFINER, the token endpoint's
  only way to the new tables.

Both new tables have row-level security ENABLEd and FORCEd with the tenant policy; the
application role gets no privilege on them (as on api_keys), only EXECUTE on the
functions.

Online: the tables are new and empty; the columns are nullable without a default (a
moment's ACCESS EXCLUSIVE lock on api_keys, under lock_timeout); then, outside the
transaction, the foreign key is added NOT VALID and validated in a transaction of its own
(SHARE UPDATE EXCLUSIVE: writers go on), and the index is built CONCURRENTLY. Re-running
after a failure is safe.

downgrade() deletes every access token (the release before would take them for keys that
never expire), drops the columns, the functions and the tables (registered clients are
lost: register them again after upgrading again), and puts authenticate_api_key v2 back.

Revision ID: 20261207_smart_clients
Revises: 20261207_key_scopes
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.database_code import drop_invalid_index, run_sql_file

revision: str = "20261207_smart_clients"
down_revision: str | None = "20261207_key_scopes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
AUTHENTICATE = "authenticate_api_key(text)"
CLIENT_KEYS = "smart_client_keys(uuid)"
ISSUE_TOKEN = "smart_issue_token(uuid, uuid, text, timestamptz, text, text[], integer)"
TOKEN_CLIENT_FK = "fk_api_keys_organization_id_client_id_smart_clients"
TOKEN_INDEX = "ix_api_keys_organization_id_client_id"

NEW_TABLES = {
    "smart_clients": """
CREATE TABLE IF NOT EXISTS smart_clients (
    organization_id uuid NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    jwks jsonb,
    jwks_url text,
    scopes text[] NOT NULL,
    created_at timestamptz DEFAULT now() NOT NULL,
    revoked_at timestamptz,
    CONSTRAINT pk_smart_clients PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_smart_clients_organization_id_organizations
        FOREIGN KEY (organization_id) REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT ck_smart_clients_keys CHECK (num_nonnulls(jwks, jwks_url) = 1)
)""",
    "smart_client_assertions": """
CREATE TABLE IF NOT EXISTS smart_client_assertions (
    organization_id uuid NOT NULL,
    client_id uuid NOT NULL,
    jti text NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT pk_smart_client_assertions PRIMARY KEY (organization_id, client_id, jti),
    CONSTRAINT fk_smart_client_assertions_client_id_smart_clients
        FOREIGN KEY (organization_id, client_id)
        REFERENCES smart_clients (organization_id, id) ON DELETE RESTRICT
)""",
}

NEW_TABLE_INDEXES = [
    "-- A table created by this very migration, still empty:\n"
    "-- squawk-ignore require-concurrent-index-creation\n"
    "CREATE INDEX IF NOT EXISTS ix_smart_clients_id ON smart_clients (id)"
]


def _grant_functions() -> None:
    role = get_settings().app_db_role
    for function in (AUTHENTICATE, CLIENT_KEYS, ISSUE_TOKEN):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {role}")


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    for table, sql in NEW_TABLES.items():
        op.execute(sql)
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING (organization_id = {CURRENT_TENANT}) "
            f"WITH CHECK (organization_id = {CURRENT_TENANT})"
        )
    for sql in NEW_TABLE_INDEXES:
        op.execute(sql)
    op.execute("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS client_id uuid")
    op.execute("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz")
    op.execute(
        "-- Created again at once, in this transaction, with its new result type:\n"
        "-- squawk-ignore ban-drop-function\n"
        f"DROP FUNCTION IF EXISTS {AUTHENTICATE}"
    )
    run_sql_file("functions/authenticate_api_key/v3.sql")
    run_sql_file("functions/smart_client_keys/v1.sql")
    run_sql_file("functions/smart_issue_token/v1.sql")
    _grant_functions()

    with op.get_context().autocommit_block():
        # Never queue for long behind (and so in front of) the site's own queries.
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        op.execute(
            "-- A leftover of an interrupted run, added again below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            f"ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS {TOKEN_CLIENT_FK}"
        )
        op.execute(
            f"ALTER TABLE api_keys ADD CONSTRAINT {TOKEN_CLIENT_FK} "
            "FOREIGN KEY (organization_id, client_id) "
            "REFERENCES smart_clients (organization_id, id) ON DELETE RESTRICT NOT VALID"
        )
        op.execute(f"ALTER TABLE api_keys VALIDATE CONSTRAINT {TOKEN_CLIENT_FK}")
        drop_invalid_index(TOKEN_INDEX)
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TOKEN_INDEX} "
            "ON api_keys (organization_id, client_id) WHERE client_id IS NOT NULL"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    # Tokens first: to the release before, a row of api_keys is a key that never expires.
    op.execute("DELETE FROM api_keys WHERE client_id IS NOT NULL")
    op.execute(f"DROP FUNCTION IF EXISTS {ISSUE_TOKEN}")
    op.execute(f"DROP FUNCTION IF EXISTS {CLIENT_KEYS}")
    op.execute(f"DROP FUNCTION IF EXISTS {AUTHENTICATE}")
    run_sql_file("functions/authenticate_api_key/v2.sql")
    role = get_settings().app_db_role
    op.execute(f"REVOKE ALL ON FUNCTION {AUTHENTICATE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {AUTHENTICATE} TO {role}")
    op.execute(f"DROP INDEX IF EXISTS {TOKEN_INDEX}")
    op.execute(
        "-- Added by this revision; the earlier release does not read it:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS {TOKEN_CLIENT_FK}"
    )
    for column in ("client_id", "expires_at"):
        op.execute(
            "-- Added by this revision; the earlier release does not read it:\n"
            "-- squawk-ignore ban-drop-column\n"
            f"ALTER TABLE api_keys DROP COLUMN IF EXISTS {column}"
        )
    for table in reversed(NEW_TABLES):
        op.execute(f"DROP TABLE IF EXISTS {table}")
