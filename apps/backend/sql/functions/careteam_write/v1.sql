-- careteam_write v1: one care team change as one statement (tenant, key check, the
-- patient's lock, If-Match, the change, its events), committed where it ends; returns
-- the team after it, each row with the write's outcome. p_if_version: the team's version
-- as the caller read it (last event number, sum of the members' record versions), or
-- NULL. A write whose id (p_write_id) is on the patient's events already changes nothing.
-- Called by: CareTeamService writes (src/services/care_team_service.py, WRITE).
-- Installed by: revision 20261206_writes_in_one_statement.
CREATE OR REPLACE FUNCTION public.careteam_write(
    p_op text, p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text,
    p_note text, p_if_version bigint[], p_key_hash text, p_write_id uuid)
RETURNS TABLE (
    changed boolean, previous_primary uuid, patient_id uuid, provider_id uuid,
    is_primary_provider boolean, assigned_at timestamptz, since timestamptz,
    first_name text, last_name text, active boolean, provider_version bigint,
    version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_changed boolean := true;
    v_previous uuid;
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    PERFORM pg_catalog.set_config('careteam.write_id', p_write_id::text, true);
    -- The patient's lock, as the write function takes it (again: then at no cost).
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;
    -- Unless this very write is done already (an attempt the application lost ran after
    -- all: before this one, or this is that attempt, running after the one that
    -- replaced it): then it changes nothing more, and the team is its answer.
    IF p_write_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM public.care_team_events AS e
        WHERE e.organization_id = p_org AND e.write_id = p_write_id
          AND e.patient_id = p_patient) THEN
        IF p_if_version IS NOT NULL THEN
            IF ARRAY[
                (SELECT coalesce(max(e.seq), 0) FROM public.care_team_events AS e
                 WHERE e.organization_id = p_org AND e.patient_id = p_patient),
                (SELECT coalesce(sum(v.version), 0)::bigint
                 FROM public.care_team_assignments AS a
                 JOIN public.providers AS v
                     ON v.organization_id = a.organization_id AND v.id = a.provider_id
                 WHERE a.organization_id = p_org AND a.patient_id = p_patient)
            ] IS DISTINCT FROM p_if_version THEN
                RAISE EXCEPTION USING ERRCODE = 'CT008',
                    MESSAGE = 'the care team is not at the version named';
            END IF;
        END IF;
        CASE p_op
        WHEN 'assign_primary' THEN
            SELECT w.changed, w.previous_primary INTO v_changed, v_previous
            FROM public.careteam_assign_primary(
                p_org, p_patient, p_provider, p_actor, p_reason, p_note) AS w;
        WHEN 'add_secondary' THEN
            v_changed := public.careteam_add_secondary(
                p_org, p_patient, p_provider, p_actor, p_reason, p_note);
        WHEN 'remove_member' THEN
            IF public.careteam_remove_member(
                    p_org, p_patient, p_provider, p_actor, p_reason, p_note) THEN
                v_previous := p_provider;
            END IF;
        ELSE
            RAISE EXCEPTION 'careteam_write: unknown operation %', p_op;
        END CASE;
    END IF;
    RETURN QUERY
    SELECT v_changed, v_previous, t.*
    FROM public.careteam_care_team(p_org, p_patient, NULL) AS t;
END
$$;
