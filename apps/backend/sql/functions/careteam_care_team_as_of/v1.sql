-- careteam_care_team_as_of v1: careteam_enter, then the patient's care team as it stood
-- at p_as_of, from the periods that held then (the patient row comes back with no
-- period, so "no such patient" and "no members then" are told apart).
-- Called by: CareTeamService reads as of an instant (src/services/care_team_service.py,
-- SELECT_TEAM_AS_OF).
-- Installed by: revision 20261206_writes_in_one_statement.
CREATE OR REPLACE FUNCTION public.careteam_care_team_as_of(
    p_org uuid, p_patient uuid, p_as_of timestamptz, p_key_hash text)
RETURNS TABLE (
    patient_id uuid, provider_id uuid, is_primary_provider boolean,
    assigned_at timestamptz, since timestamptz, first_name text, last_name text,
    active boolean, provider_version bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    RETURN QUERY
    SELECT p.id, pe.provider_id, pe.role = 'primary', lower(pe.valid), lower(pe.valid),
           v.first_name, v.last_name, v.active, v.version, NULL::bigint
    FROM public.patients AS p
    LEFT JOIN public.care_team_periods AS pe
        ON pe.organization_id = p.organization_id AND pe.patient_id = p.id
       AND pe.valid @> p_as_of
    LEFT JOIN public.providers AS v
        ON v.organization_id = pe.organization_id AND v.id = pe.provider_id
    WHERE p.organization_id = p_org AND p.id = p_patient
    ORDER BY pe.role = 'primary' DESC, lower(pe.valid), pe.provider_id;
END
$$;
