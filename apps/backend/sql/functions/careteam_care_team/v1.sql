-- careteam_care_team v1: careteam_enter, then the patient's current care team in one
-- statement: the patient row even with an empty team, each member's name, status and
-- `since` (the start of its open period, read through the GiST index: valid @>
-- 'infinity', as upper_inf() is not indexable), and the team's version (its last event
-- number).
-- Called by: CareTeamService reads (src/services/care_team_service.py, SELECT_TEAM) and
-- careteam_write.
-- Installed by: revision 20261206_one_round_trip.
CREATE OR REPLACE FUNCTION public.careteam_care_team(
    p_org uuid, p_patient uuid, p_key_hash text)
RETURNS TABLE (
    patient_id uuid, provider_id uuid, is_primary_provider boolean,
    assigned_at timestamptz, since timestamptz, first_name text, last_name text,
    active boolean, provider_version bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    RETURN QUERY
    SELECT p.id, a.provider_id, a.is_primary_provider, a.assigned_at,
           pe.since, v.first_name, v.last_name, v.active, v.version, e.version
    FROM public.patients AS p
    CROSS JOIN LATERAL (
        SELECT coalesce(max(seq), 0) AS version FROM public.care_team_events
        WHERE organization_id = p.organization_id AND patient_id = p.id) AS e
    LEFT JOIN public.care_team_assignments AS a
        ON a.organization_id = p.organization_id AND a.patient_id = p.id
    LEFT JOIN (
        SELECT o.provider_id, lower(o.valid) AS since
        FROM public.care_team_periods AS o
        WHERE o.organization_id = p_org AND o.patient_id = p_patient
          AND o.valid @> 'infinity'::timestamptz) AS pe
        ON pe.provider_id = a.provider_id
    LEFT JOIN public.providers AS v
        ON v.organization_id = a.organization_id AND v.id = a.provider_id
    WHERE p.organization_id = p_org AND p.id = p_patient
    ORDER BY a.is_primary_provider DESC, a.assigned_at, a.provider_id;
END
$$;
