-- careteam_assign_primary v1: makes p_provider the patient's primary (the one before it
-- stays on the team as a secondary; assigning the current primary changes nothing),
-- within the provider's panel capacity (its row locked, after the patient's).
-- Raises CT001, CT002, CT003, CT006.
-- Called by: CareTeamService.assign_primary (src/services/care_team_service.py).
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_assign_primary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS TABLE (changed boolean, previous_primary uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_capacity bigint;
    v_size bigint;
    v_previous uuid;
BEGIN
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;
    SELECT active, panel_capacity INTO v_active, v_capacity
    FROM providers WHERE organization_id = p_org AND id = p_provider
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    IF EXISTS (SELECT 1 FROM care_team_assignments
               WHERE organization_id = p_org AND patient_id = p_patient
                 AND provider_id = p_provider AND is_primary_provider)
       AND NOT EXISTS (SELECT 1 FROM care_team_assignments
                       WHERE organization_id = p_org AND patient_id = p_patient
                         AND provider_id <> p_provider AND is_primary_provider) THEN
        RETURN QUERY SELECT false, p_provider;
        RETURN;
    END IF;
    IF v_capacity IS NOT NULL THEN
        SELECT count(*) INTO v_size FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_provider AND is_primary_provider;
        IF v_size >= v_capacity THEN
            RAISE EXCEPTION USING ERRCODE = 'CT006', MESSAGE = 'panel full',
                DETAIL = format('%s of %s', v_size, v_capacity);
        END IF;
    END IF;
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    WITH demoted AS (
        UPDATE care_team_assignments SET is_primary_provider = false
        WHERE organization_id = p_org AND patient_id = p_patient AND is_primary_provider
          AND provider_id <> p_provider
        RETURNING provider_id
    ), recorded AS (
        INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
        SELECT p_org, p_patient, provider_id, 'primary_demoted', provider_id,
               p_actor, p_reason, p_note, now()
        FROM demoted
        RETURNING provider_id
    )
    SELECT min(provider_id::text)::uuid INTO v_previous FROM recorded;
    WITH promoted AS (
        INSERT INTO care_team_assignments
            (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
        VALUES (p_org, p_patient, p_provider, true, now())
        ON CONFLICT (organization_id, patient_id, provider_id)
        DO UPDATE SET is_primary_provider = true, assigned_at = now()
        WHERE NOT care_team_assignments.is_primary_provider
        RETURNING provider_id
    )
    INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
    SELECT p_org, p_patient, provider_id, 'primary_assigned', v_previous,
           p_actor, p_reason, p_note, now()
    FROM promoted;
    RETURN QUERY SELECT true, v_previous;
END
$$;
