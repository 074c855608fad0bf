-- careteam_change_period v3: as v2 (same behaviour, same signature), reading through the
-- exclusion constraints' GiST index only the patient's open periods and those that reach
-- past the latest open start, not its whole history.
-- Called by: careteam_keep_periods (the trigger on care_team_assignments).
-- Installed by: revision 20261206_period_changes_by_index, replacing v2, which its
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
    v_after timestamptz;
    v_latest_open timestamptz;
    v_latest timestamptz;
    v_at timestamptz;
BEGIN
    SELECT max(id) FILTER (WHERE provider_id = p_provider),
           max(role) FILTER (WHERE provider_id = p_provider),
           coalesce(bool_or(role = 'primary' AND provider_id <> p_provider), false),
           max(lower(valid)) FILTER (
               WHERE provider_id = p_provider
                  OR (p_role = 'primary' AND role = 'primary')),
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
