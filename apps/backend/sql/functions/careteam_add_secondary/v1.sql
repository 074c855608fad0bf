-- careteam_add_secondary v1: adds p_provider to the patient's team as a secondary;
-- already a secondary, nothing changes (false). Raises CT001, CT002, CT003, CT004.
-- Called by: careteam_write (p_op 'add_secondary'); before revision
-- 20261206_writes_in_one_statement, CareTeamService.add_secondary directly.
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_add_secondary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_primary boolean;
BEGIN
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;
    SELECT active INTO v_active FROM providers
    WHERE organization_id = p_org AND id = p_provider
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    SELECT is_primary_provider INTO v_primary FROM care_team_assignments
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider;
    IF v_primary THEN
        RAISE EXCEPTION USING ERRCODE = 'CT004', MESSAGE = 'provider already primary';
    END IF;
    IF v_primary IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    INSERT INTO care_team_assignments
        (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
    VALUES (p_org, p_patient, p_provider, false, now());
    INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
    VALUES (p_org, p_patient, p_provider, 'secondary_added', NULL, p_actor,
            p_reason, p_note, now());
    RETURN true;
END
$$;
