"""A patient has at most one primary provider per organization: enforce it in PostgreSQL.

The rule is enforced by a partial unique index rather than by application code, because
only the database sees every writer (service, scripts, manual SQL) and every concurrent
transaction. Before the index can exist, existing data is brought into line:

Dedupe rule: for each (organization_id, patient_id) with several primary providers, the
primary with the latest assigned_at (tie: highest id) stays primary; the others are
demoted to secondary. No row is ever deleted. Every demotion is recorded as a
`migration_dedupe` event naming the demoted and the kept provider, so it can be reviewed
and, if needed, undone by hand.

The duplicated patients are locked first (FOR NO KEY UPDATE on their patients rows, in
(organization_id, id) order), the same lock CareTeamService takes, so the dedupe cannot
race with an assignment made through the service.

downgrade() drops the index only. It does not re-promote demoted rows: the
migration_dedupe events say which they were.

Revision ID: 20260114_unique_primary
Revises: 20260114_rls_coverage
Create Date: 2026-01-14
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20260114_unique_primary"
down_revision: str | None = "20260114_rls_coverage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX_NAME = "idx_unique_primary_provider_per_patient"

# RLS is forced on the tenant tables, so a role that cannot bypass it would see no rows
# and "find" no duplicates. Refuse to run rather than build on a false picture.
REQUIRE_BYPASS_RLS = """
DO $$
BEGIN
    IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'role % must be superuser or have BYPASSRLS to migrate care team data',
            current_user;
    END IF;
END
$$
"""

LOCK_DUPLICATED_PATIENTS = """
SELECT p.id
FROM patients AS p
JOIN (
    SELECT organization_id, patient_id
    FROM care_team_assignments
    WHERE is_primary_provider
    GROUP BY organization_id, patient_id
    HAVING count(*) > 1
) AS d ON d.organization_id = p.organization_id AND d.patient_id = p.id
ORDER BY p.organization_id, p.id
FOR NO KEY UPDATE OF p
"""

# Keep the latest assigned_at (tie: highest id); demote the rest; one event per demotion.
DEDUPE_PRIMARIES = f"""
WITH ranked AS (
    SELECT id, organization_id, patient_id, provider_id,
           row_number() OVER w AS rank,
           first_value(provider_id) OVER w AS kept_provider_id
    FROM care_team_assignments
    WHERE is_primary_provider
    WINDOW w AS (PARTITION BY organization_id, patient_id ORDER BY assigned_at DESC, id DESC)
), demoted AS (
    UPDATE care_team_assignments AS a
    SET is_primary_provider = false
    FROM ranked AS r
    WHERE a.id = r.id AND r.rank > 1
    RETURNING a.organization_id, a.patient_id, a.provider_id, a.id, r.kept_provider_id
)
INSERT INTO care_team_events
    (organization_id, patient_id, provider_id, event_type,
     previous_primary_provider_id, actor, reason)
SELECT organization_id, patient_id, provider_id, 'migration_dedupe',
       provider_id, 'migration:{revision}',
       'duplicate primary demoted to secondary (assignment ' || id
           || '); kept provider ' || kept_provider_id
FROM demoted
"""

CREATE_INDEX = f"""
CREATE UNIQUE INDEX {INDEX_NAME}
ON care_team_assignments (organization_id, patient_id)
WHERE is_primary_provider = true
"""


def upgrade() -> None:
    op.execute(REQUIRE_BYPASS_RLS)
    op.execute(LOCK_DUPLICATED_PATIENTS)
    op.execute(DEDUPE_PRIMARIES)
    op.execute(CREATE_INDEX)


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX_NAME}")
