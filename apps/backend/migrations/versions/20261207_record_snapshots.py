"""Every version of a patient and a provider, readable back (FHIR's vread and history).

- `record_changes.version` bigint: the record's version after the change (what the
  record's ETag and FHIR's `meta.versionId` say).
- `record_changes.snapshot` jsonb: the record's fields as the change left them (a
  patient's names, birth date, gender and identifiers; a provider's names, NPI, active,
  panel capacity and its panel size then), written by the service in the same statement
  as the change. Health data: it stays in the database (under the table's row-level
  security), never in a log.

Both are NULL on the changes written before this revision: those versions' values were
never kept, and the service says so (VersionNotKept) instead of making them up; their
version numbers follow from `seq` (every version since the trail began has one change).

Online: two nullable columns without a default (a moment's lock, no rewrite, nothing to
backfill), in one short transaction under lock_timeout.

downgrade() drops both columns (the snapshots kept since are lost; the release before
neither writes nor reads them).

Revision ID: 20261207_record_snapshots
Revises: 20261207_patient_gender
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261207_record_snapshots"
down_revision: str | None = "20261207_patient_gender"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE record_changes ADD COLUMN IF NOT EXISTS version bigint")
    op.execute("ALTER TABLE record_changes ADD COLUMN IF NOT EXISTS snapshot jsonb")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for column in ("snapshot", "version"):
        op.execute(
            "-- Added by this revision; the earlier release does not read it:\n"
            "-- squawk-ignore ban-drop-column\n"
            f"ALTER TABLE record_changes DROP COLUMN IF EXISTS {column}"
        )
