-- careteam_assign_primary v2: as v1, recording its events after its changes, not
-- between them (same events, same order, same numbers): less of it runs under the
-- organization's event counter, which every writer of the organization waits on.
-- Called by: careteam_write (p_op 'assign_primary'); the benchmarks' seeds (bench/).
-- Installed by: revision 20261206_writes_in_one_statement, replacing v1, which its
-- downgrade puts back.
CREATE OR REPLACE FUNCTION careteam_assign_primary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS TABLE (changed boolean, previous_primary uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_capacity bigint;
    v_size bigint;
    v_demoted uuid[];
    v_previous uuid;
    v_promoted integer;
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
    )
    SELECT array_agg(provider_id ORDER BY provider_id::text), min(provider_id::text)::uuid
    INTO v_demoted, v_previous
    FROM demoted;
    INSERT INTO care_team_assignments
        (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
    VALUES (p_org, p_patient, p_provider, true, now())
    ON CONFLICT (organization_id, patient_id, provider_id)
    DO UPDATE SET is_primary_provider = true, assigned_at = now()
    WHERE NOT care_team_assignments.is_primary_provider;
    GET DIAGNOSTICS v_promoted = ROW_COUNT;
    INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
    SELECT p_org, p_patient, demoted, 'primary_demoted', demoted, p_actor,
           p_reason, p_note, now()
    FROM unnest(v_demoted) WITH ORDINALITY AS d (demoted, n)
    ORDER BY n;
    IF v_promoted > 0 THEN
        INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
        VALUES (p_org, p_patient, p_provider, 'primary_assigned', v_previous,
                p_actor, p_reason, p_note, now());
    END IF;
    RETURN QUERY SELECT true, v_previous;
END
$$;
