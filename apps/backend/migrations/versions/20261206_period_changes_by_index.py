"""Period changes that read the patient's open periods and recent ones, not its whole
history.

careteam_change_period (run by the trigger on care_team_assignments) aggregated every
period the patient ever had, to find the membership's open period, whether another
primary is open, and the latest instant recorded for the patient (a patient's periods
never run backwards). So a write cost in proportion to the patient's history: 1.17 ms
per assignment at 1,000 periods, 2.42 ms at 4,000, where this definition takes 0.80 and
0.90 ms (bench/patient_history.py, figures in docs/PERFORMANCE.md).

Now it reads, through the exclusion constraints' GiST index (which serves both
conditions):

1. the open periods (`valid @> 'infinity'`): the membership's, another open primary,
   and L, the latest start among them;
2. the periods that reach past L (`valid && [L, infinity)`): only they can hold a start
   or an end later than L, so the latest instant is the greatest of L and their bounds.

A patient with no open period (its team emptied) reads its whole history, as before:
that is rare. Same behaviour, same signature; the earlier revision's tests of the
never-backwards rule run against it.

Online: CREATE OR REPLACE FUNCTION takes no lock a writer waits on for long.
downgrade() puts back 20261206_lean_period_changes's definition.

Revision ID: 20261206_period_changes_by_index
Revises: 20261206_one_round_trip
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.migration_runner import revision_module
from src.models.care_team import ChangeReason, PeriodRole

revision: str = "20261206_period_changes_by_index"
down_revision: str | None = "20261206_one_round_trip"
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
    v_after timestamptz;
    v_latest_open timestamptz;
    v_latest timestamptz;
    v_at timestamptz;
BEGIN
    SELECT max(id) FILTER (WHERE provider_id = p_provider),
           max(role) FILTER (WHERE provider_id = p_provider),
           coalesce(bool_or(role = '{PRIMARY}' AND provider_id <> p_provider), false),
           max(lower(valid)) FILTER (
               WHERE provider_id = p_provider
                  OR (p_role = '{PRIMARY}' AND role = '{PRIMARY}')),
           max(lower(valid))
    INTO v_open, v_role, v_other_primary, v_after, v_latest_open
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient
      AND valid @> 'infinity'::timestamptz;
    IF v_open IS NOT NULL AND v_role = p_role THEN
        RETURN;
    END IF;
    -- The latest start or end recorded for the patient: past the latest open start,
    -- only periods that reach beyond it can hold one. (Two statements, not one with
    -- an OR: the cached plan of each must be able to use the index.)
    IF v_latest_open IS NULL THEN
        SELECT greatest(max(lower(valid)), max(upper(valid)))
        INTO v_latest
        FROM care_team_periods
        WHERE organization_id = p_org AND patient_id = p_patient;
    ELSE
        SELECT greatest(max(lower(valid)), max(upper(valid)))
        INTO v_latest
        FROM care_team_periods
        WHERE organization_id = p_org AND patient_id = p_patient
          AND valid && tstzrange(v_latest_open, NULL);
    END IF;
    v_at := greatest(p_at, v_latest, v_after + interval '1 microsecond');
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
    op.execute(revision_module("20261206_lean_period_changes").CHANGE_PERIOD)
