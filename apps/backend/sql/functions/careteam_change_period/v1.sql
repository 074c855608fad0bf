-- careteam_change_period v1: a membership changes role at p_at (or ends, p_role NULL):
-- its open period closes and a new one opens, no earlier than any start or end already
-- recorded for the patient and after the start of every open period it closes (p_at is
-- its transaction's start); a primary that begins while another is open (history from
-- before the rule) ends that other one at the same instant.
-- Called by: careteam_keep_periods (the trigger on care_team_assignments) and the
-- periods' backfill (sql/temporary/careteam_backfill_periods/v1.sql).
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_change_period(
    p_org uuid, p_patient uuid, p_provider uuid, p_role text, p_at timestamptz,
    p_actor text, p_reason text, p_note text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_open bigint;
    v_role text;
    v_at timestamptz;
BEGIN
    SELECT id, role INTO v_open, v_role
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider
      AND upper_inf(valid);
    IF v_open IS NOT NULL AND v_role = p_role THEN
        RETURN;
    END IF;
    SELECT greatest(
        p_at,
        max(lower(valid)),
        max(upper(valid)),
        max(lower(valid)) FILTER (
            WHERE upper_inf(valid)
              AND (provider_id = p_provider OR (p_role = 'primary' AND role = 'primary'))
        ) + interval '1 microsecond')
    INTO v_at
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient;
    v_at := coalesce(v_at, p_at);
    IF v_open IS NOT NULL THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = p_reason, end_note = p_note
        WHERE organization_id = p_org AND id = v_open;
    END IF;
    IF p_role IS NULL THEN
        RETURN;
    END IF;
    IF p_role = 'primary' THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = 'data_correction', end_note = 'another primary period began'
        WHERE organization_id = p_org AND patient_id = p_patient AND role = 'primary'
          AND upper_inf(valid);
    END IF;
    INSERT INTO care_team_periods
        (organization_id, patient_id, provider_id, role, valid, started_by, start_reason,
         start_note)
    VALUES (p_org, p_patient, p_provider, p_role, tstzrange(v_at, NULL), p_actor, p_reason,
            p_note);
END
$$;
