-- careteam_change_team v1: one care team change as one statement, committed where it
-- ends, with or without an Idempotency-Key: it sets the tenant and checks the API key
-- (careteam_enter), claims the Idempotency-Key if there is one (careteam_claim_key: a
-- key already used answers with its stored result, `replayed`, and nothing runs), locks
-- the patient, checks If-Match (p_if_version: the team's version as the caller read it,
-- {last event number, sum of the members' record versions}; CT008 if the team moved
-- on), runs the change (p_op: assign_primary, add_secondary or remove_member), stores
-- its result under the key (careteam_store_result), and returns the team after it, each
-- row with the change's outcome: `changed`, and `previous_primary` (assign: the primary
-- before it; remove: the provider, if it was the primary).
-- A change whose id (p_write_id, on its events) is on the patient's events already
-- changes nothing more (an attempt the application lost that ran after all): the team
-- is its answer.
-- Called by: CareTeamService writes (src/services/care_team_service.py, WRITE).
-- Installed by: revision 20261207_one_write_path. (careteam_write, which it follows,
-- stays for the release before.)
CREATE OR REPLACE FUNCTION public.careteam_change_team(
    p_op text, p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text,
    p_note text, p_if_version bigint[], p_key_hash text, p_write_id uuid,
    p_idempotency_key text, p_fingerprint text)
RETURNS TABLE (
    replayed boolean, changed boolean, previous_primary uuid, patient_id uuid,
    provider_id uuid, is_primary_provider boolean, assigned_at timestamptz,
    since timestamptz, first_name text, last_name text, active boolean,
    provider_version bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stored jsonb;
    v_changed boolean := true;
    v_previous uuid;
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    IF p_idempotency_key IS NOT NULL THEN
        v_stored := public.careteam_claim_key(p_org, p_idempotency_key, p_fingerprint, false);
        IF v_stored IS NOT NULL THEN
            RETURN QUERY
            SELECT true, r.*
            FROM jsonb_to_recordset(v_stored) AS r (
                changed boolean, previous_primary uuid, patient_id uuid, provider_id uuid,
                is_primary_provider boolean, assigned_at timestamptz, since timestamptz,
                first_name text, last_name text, active boolean, provider_version bigint,
                version bigint);
            RETURN;
        END IF;
    END IF;
    PERFORM pg_catalog.set_config('careteam.write_id', p_write_id::text, true);
    -- The patient's lock, as the change function takes it (again: then at no cost).
    PERFORM 1 FROM public.patients AS p
    WHERE p.organization_id = p_org AND p.id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;
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
            RAISE EXCEPTION 'careteam_change_team: unknown operation %', p_op;
        END CASE;
    END IF;
    IF p_idempotency_key IS NULL THEN
        RETURN QUERY
        SELECT false, v_changed, v_previous, t.*
        FROM public.careteam_care_team(p_org, p_patient, NULL) AS t;
        RETURN;
    END IF;
    SELECT jsonb_agg(
               jsonb_build_object('changed', v_changed, 'previous_primary', v_previous)
               || (to_jsonb(t) - 'ordinality')
               ORDER BY t.ordinality)
    INTO v_stored
    FROM ROWS FROM (public.careteam_care_team(p_org, p_patient, NULL)) WITH ORDINALITY AS t;
    PERFORM public.careteam_store_result(p_org, p_idempotency_key, v_stored, false);
    RETURN QUERY
    SELECT false, r.*
    FROM jsonb_to_recordset(v_stored) AS r (
        changed boolean, previous_primary uuid, patient_id uuid, provider_id uuid,
        is_primary_provider boolean, assigned_at timestamptz, since timestamptz,
        first_name text, last_name text, active boolean, provider_version bigint,
        version bigint);
END
$$;
