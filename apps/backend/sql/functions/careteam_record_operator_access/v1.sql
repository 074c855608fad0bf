-- careteam_record_operator_access v1: one access log entry of an operator's command (no
-- API key, no SMART client: `careteam export`, run by someone with access to the
-- database), as one statement: the tenant, the entry (the operator, what, outcome; ids
-- and parameter names only, never values) and a row per patient it names, committed
-- where the statement ends. An entry whose id is already there (a retry after a lost
-- connection) changes nothing: each entry is written once.
-- Called by: src/services/access_log_service.py (RECORD_OPERATOR, for an entry whose
-- `operator` is set), from src/api/bulk_export.py for the pages of `careteam export`.
-- Installed by: revision 20261207_access_log_operator.
CREATE OR REPLACE FUNCTION public.careteam_record_operator_access(
    p_org uuid, p_id uuid, p_operator text, p_route text, p_interaction text,
    p_action text, p_parameters text[], p_status integer, p_result_count integer,
    p_patient_ids uuid[])
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_at timestamptz;
BEGIN
    PERFORM set_config('app.current_organization_id', p_org::text, true);
    INSERT INTO public.access_log (
        organization_id, id, operator, route, interaction, action, parameters, status,
        result_count, patient_ids)
    VALUES (
        p_org, p_id, p_operator, p_route, p_interaction, p_action, p_parameters, p_status,
        p_result_count, p_patient_ids)
    ON CONFLICT (organization_id, id) DO NOTHING
    RETURNING recorded_at INTO v_at;
    IF v_at IS NULL THEN
        RETURN false;  -- written by an earlier attempt
    END IF;
    INSERT INTO public.access_log_patients (organization_id, patient_id, recorded_at, entry_id)
    SELECT DISTINCT p_org, patient, v_at, p_id FROM unnest(p_patient_ids) AS patient;
    RETURN true;
END;
$$;
