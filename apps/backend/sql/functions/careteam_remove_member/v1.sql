-- careteam_remove_member v1: takes p_provider off the patient's team; returns whether
-- it was the primary. Raises CT001, CT005.
-- Called by: careteam_write (p_op 'remove_member'); before revision
-- 20261206_writes_in_one_statement, CareTeamService.remove_member directly.
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_remove_member(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_was_primary boolean;
BEGIN
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    DELETE FROM care_team_assignments
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider
    RETURNING is_primary_provider INTO v_was_primary;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT005', MESSAGE = 'provider not on the care team';
    END IF;
    INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
    VALUES (p_org, p_patient, p_provider, 'provider_removed',
            CASE WHEN v_was_primary THEN p_provider END, p_actor, p_reason, p_note,
            now());
    RETURN v_was_primary;
END
$$;
