"""Patients' administrative gender, as FHIR R4 (and US Core's Patient) states it.

- `patients.gender` text NOT NULL DEFAULT 'unknown': one of `male`, `female`, `other`,
  `unknown` (FHIR AdministrativeGender), by the CHECK constraint `ck_patients_gender`.
  Every record written before reads `unknown`: nobody told us otherwise.

Online: the column has a constant default, so PostgreSQL 11+ adds it without rewriting
the table (a moment's ACCESS EXCLUSIVE lock, under lock_timeout); the constraint is
added NOT VALID, then validated in a transaction of its own, which only reads the table
(SHARE UPDATE EXCLUSIVE: writers go on). Re-running after a failure is safe.

downgrade() drops the constraint and the column (the genders given since are lost; the
release before does not read them).

Revision ID: 20261207_patient_gender
Revises: 20261207_normalized_identifiers
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261207_patient_gender"
down_revision: str | None = "20261207_normalized_identifiers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As this revision made them: frozen here, so that a later change to the application's
# enum never changes what this revision does.
GENDERS = "('male', 'female', 'other', 'unknown')"
CONSTRAINT = "ck_patients_gender"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # Never queue for long behind (and so in front of) the site's own queries.
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        op.execute(
            "ALTER TABLE patients ADD COLUMN IF NOT EXISTS gender text DEFAULT 'unknown' NOT NULL"
        )
        op.execute(
            "-- A leftover of an interrupted run, added again below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            f"ALTER TABLE patients DROP CONSTRAINT IF EXISTS {CONSTRAINT}"
        )
        op.execute(
            f"ALTER TABLE patients ADD CONSTRAINT {CONSTRAINT} CHECK (gender IN {GENDERS}) "
            "NOT VALID"
        )
        op.execute(f"ALTER TABLE patients VALIDATE CONSTRAINT {CONSTRAINT}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "-- Added by this revision; the earlier release does not read it:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE patients DROP CONSTRAINT IF EXISTS {CONSTRAINT}"
    )
    op.execute(
        "-- Added by this revision; the earlier release does not read it:\n"
        "-- squawk-ignore ban-drop-column\n"
        "ALTER TABLE patients DROP COLUMN IF EXISTS gender"
    )
