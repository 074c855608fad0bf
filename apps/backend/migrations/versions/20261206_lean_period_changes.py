"""Period changes in one read of the patient's periods, not two, and no needless update.

careteam_change_period (run by the trigger on care_team_assignments, twice for a
primary assignment: the previous primary demoted, the new one promoted) read the
patient's periods twice (the provider's open period, then the latest instant recorded
for the patient) and then always ran an UPDATE closing other open primary periods,
which finds none except on history from before the rule. Now one aggregate over the
patient's periods gives all three, and that UPDATE runs only when there is such a
period. Same behaviour, same signature (figures: docs/PERFORMANCE.md).

Online: CREATE OR REPLACE FUNCTION takes no lock a writer waits on for long.
downgrade() puts back the earlier revision's definition.

Revision ID: 20261206_lean_period_changes
Revises: 20261128_care_team_periods
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.migration_runner import revision_module
from src.models.care_team import ChangeReason, PeriodRole

revision: str = "20261206_lean_period_changes"
down_revision: str | None = "20261128_care_team_periods"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIMARY = PeriodRole.PRIMARY.value
CORRECTION = ChangeReason.DATA_CORRECTION.value

# A membership changes role at `p_at` (or ends: p_role NULL): its open period closes and
# a new one opens. A patient's periods never run backwards: a change happens no earlier
# than any start or end already recorded for the patient, and after the start of every
# open period it closes. A primary that begins while another is open (history from
# before the rule) ends that other one at the same instant.
CHANGE_PERIOD = f"""
CREATE OR REPLACE FUNCTION careteam_change_period(
    p_org uuid, p_patient uuid, p_provider uuid, p_role text, p_at timestamptz,
    p_actor text, p_reason text, p_note text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_open bigint;
    v_role text;
    v_other_primary boolean;
    v_at timestamptz;
BEGIN
    SELECT max(id) FILTER (WHERE provider_id = p_provider AND upper_inf(valid)),
           max(role) FILTER (WHERE provider_id = p_provider AND upper_inf(valid)),
           coalesce(bool_or(upper_inf(valid) AND role = '{PRIMARY}'
                            AND provider_id <> p_provider), false),
           greatest(
               p_at,
               max(lower(valid)),
               max(upper(valid)),
               max(lower(valid)) FILTER (
                   WHERE upper_inf(valid)
                     AND (provider_id = p_provider
                          OR (p_role = '{PRIMARY}' AND role = '{PRIMARY}'))
               ) + interval '1 microsecond')
    INTO v_open, v_role, v_other_primary, v_at
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient;
    IF v_open IS NOT NULL AND v_role = p_role THEN
        RETURN;
    END IF;
    IF v_open IS NOT NULL THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = p_reason, end_note = p_note
        WHERE organization_id = p_org AND id = v_open;
    END IF;
    IF p_role IS NULL THEN
        RETURN;
    END IF;
    IF p_role = '{PRIMARY}' AND v_other_primary THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = '{CORRECTION}', end_note = 'another primary period began'
        WHERE organization_id = p_org AND patient_id = p_patient AND role = '{PRIMARY}'
          AND upper_inf(valid);
    END IF;
    INSERT INTO care_team_periods
        (organization_id, patient_id, provider_id, role, valid, started_by, start_reason,
         start_note)
    VALUES (p_org, p_patient, p_provider, p_role, tstzrange(v_at, NULL), p_actor, p_reason,
            p_note);
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(CHANGE_PERIOD)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(revision_module("20261128_care_team_periods").CHANGE_PERIOD)
