"""Patient lists in name or creation order, and by primary provider: two indexes.

`GET /v1/patients?sort=name|-name|created|-created&primary=none|<provider_id>` pages
through an organization's patients in keyset order (src/services/directory_service.py,
PATIENT_SORTS). Each order is an index leading with organization_id, so a page reads its
rows in order from where the last one ended, and never sorts the organization:

- `ix_patients_organization_id_name_order`: the name keys (the names in lower case, kept
  by the careteam_name_keys trigger; an absent name as '', written as a CASE: see
  _name_key), byte-wise (COLLATE "C": the
  same order whatever the server's locale), then id. Plain columns and leakproof
  operators, so under row-level security the keyset condition is an index condition.
- `ix_patients_organization_id_created_at_id`: creation time, then id.

`primary=none` probes the unique primary index (organization_id, patient_id) per row
read in order; `primary=<provider>` reads the provider's panel from
ix_care_team_assignments_organization_id_provider_id_primary. Neither needs a new index.

Online: both are built CONCURRENTLY outside a transaction, under a lock_timeout, after
dropping an INVALID leftover of a failed build; writers are not blocked. Re-running after
any failure is safe.

downgrade() drops both (CONCURRENTLY): the release before never reads them.

Revision ID: 20261207_patient_primary_sort
Revises: 20261207_access_log
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

from src.database_code import drop_invalid_index

revision: str = "20261207_patient_primary_sort"
down_revision: str | None = "20261207_access_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _name_key(column: str) -> str:
    # CASE, not coalesce(): under row-level security PostgreSQL makes a condition an index
    # condition only if it knows it cannot leak, and it knows CASE but not COALESCE.
    return f"(CASE WHEN {column} IS NULL THEN '' ELSE {column} END) COLLATE \"C\""


# (name, definition), built CONCURRENTLY on patients.
INDEXES = [
    (
        "ix_patients_organization_id_name_order",
        f"(organization_id, {_name_key('last_name_key')}, {_name_key('first_name_key')}, id)",
    ),
    ("ix_patients_organization_id_created_at_id", "(organization_id, created_at, id)"),
]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        for name, columns in INDEXES:
            drop_invalid_index(name)
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON patients {columns}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        for name, _ in reversed(INDEXES):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        op.execute("RESET lock_timeout")
