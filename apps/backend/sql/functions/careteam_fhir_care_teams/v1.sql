-- careteam_fhir_care_teams v1: careteam_enter, then the FHIR CareTeams of these patients
-- in one statement: one row per period (oldest first), each with its team's span
-- (start; end_ NULL while a period is open), state, version (its last event number)
-- and the time of that event. A patient without a period has no team and no row.
-- Called by: src/services/fhir_search.py (TEAMS_BY_ID: the FHIR CareTeam read and the
-- search by patient or id alone), which builds every other CareTeam search from the
-- same columns (TEAMS).
-- Installed by: revision 20261207_fhir_reads.
CREATE OR REPLACE FUNCTION public.careteam_fhir_care_teams(
    p_org uuid, p_key_hash text, p_ids uuid[])
RETURNS TABLE (
    id uuid, start timestamptz, end_ timestamptz, active boolean, version bigint,
    updated_at timestamptz, provider_id uuid, role text, valid_from timestamptz,
    valid_to timestamptz, start_reason text, end_reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    RETURN QUERY
    SELECT t.id, s.start, s.end_, s.active, coalesce(e.seq, 0::bigint),
           coalesce(e.at, greatest(s.last_start, s.last_end)),
           q.provider_id, q.role, lower(q.valid), upper(q.valid), q.start_reason,
           q.end_reason
    FROM unnest(p_ids) AS t (id)
    CROSS JOIN LATERAL (
        SELECT min(lower(r.valid)) AS start,
               CASE WHEN bool_or(upper_inf(r.valid)) THEN NULL ELSE max(upper(r.valid)) END
                   AS end_,
               bool_or(upper_inf(r.valid)) AS active,
               max(lower(r.valid)) AS last_start, max(upper(r.valid)) AS last_end
        FROM public.care_team_periods AS r
        WHERE r.organization_id = p_org AND r.patient_id = t.id) AS s
    LEFT JOIN LATERAL (
        SELECT x.seq, x.occurred_at AS at FROM public.care_team_events AS x
        WHERE x.organization_id = p_org AND x.patient_id = t.id
        ORDER BY x.seq DESC LIMIT 1) AS e ON TRUE
    JOIN public.care_team_periods AS q
        ON q.organization_id = p_org AND q.patient_id = t.id
    ORDER BY t.id, lower(q.valid), q.provider_id;
END
$$;
