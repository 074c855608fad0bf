-- careteam_change_period v2: as v1 (same behaviour, same signature), from one read of
-- the patient's periods instead of two, and closing another open primary period only
-- when there is one.
-- Called by: careteam_keep_periods (the trigger on care_team_assignments).
-- Installed by: revision 20261206_lean_period_changes, replacing v1, which its
-- downgrade puts back.
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
           coalesce(bool_or(upper_inf(valid) AND role = 'primary'
                            AND provider_id <> p_provider), false),
           greatest(
               p_at,
               max(lower(valid)),
               max(upper(valid)),
               max(lower(valid)) FILTER (
                   WHERE upper_inf(valid)
                     AND (provider_id = p_provider
                          OR (p_role = 'primary' AND role = 'primary'))
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
    IF p_role = 'primary' AND v_other_primary THEN
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
