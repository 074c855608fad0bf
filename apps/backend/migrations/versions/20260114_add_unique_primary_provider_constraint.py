"""A patient has at most one primary provider per organization: enforce it in PostgreSQL.

The rule is enforced by a partial unique index rather than by application code, because
only the database sees every writer (service, scripts, manual SQL) and every concurrent
transaction. Before the index can exist, existing data is brought into line.

Dedupe rule: for each (organization_id, patient_id) with several primary providers, the
primary with the latest assigned_at (tie: highest id) stays primary; the others are
demoted to secondary. No row is ever deleted. Every demotion is recorded as a
`migration_dedupe` event naming the demoted assignment and the kept provider, so it can
be reviewed and, if needed, undone by hand.

Online, for large and busy tables (src/primary_dedupe.py does the work):
- the dedupe runs in batches of patients, each its own short transaction that takes the
  service's per-patient lock (FOR NO KEY UPDATE on the patients, in order) first;
- the index is built with CREATE UNIQUE INDEX CONCURRENTLY outside a transaction, with
  a short lock_timeout and bounded retries; an INVALID leftover of an interrupted run
  is dropped concurrently and rebuilt; duplicates written during the build make it
  dedupe again and retry; it never leaves an INVALID index behind.
- Re-running after a failure at any point is safe.

downgrade() drops the index concurrently. It does not re-promote demoted rows: the
migration_dedupe events say which they were.

Revision ID: 20260114_unique_primary
Revises: 20260114_rls_coverage
Create Date: 2026-01-14
"""

from collections.abc import Sequence

from alembic import context, op

from src import primary_dedupe

revision: str = "20260114_unique_primary"
down_revision: str | None = "20260114_rls_coverage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR = f"migration:{revision}"


def upgrade() -> None:
    if context.is_offline_mode():
        with op.get_context().autocommit_block():
            for statement in primary_dedupe.offline_sql(actor=ACTOR):
                op.execute(statement)
        return
    with op.get_context().autocommit_block():
        primary_dedupe.enforce(op.get_bind(), actor=ACTOR)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        primary_dedupe.drop_index(op.get_bind())
