-- careteam_transfer_batch v2: as v1, recording its events last, in patient order: the
-- batch's period changes no longer run under the organization's event counter.
-- Called by: PanelService transfers (src/services/panel_service.py, TRANSFER_BATCH).
-- Installed by: revision 20261206_writes_in_one_statement, replacing v1, which its
-- downgrade puts back.
CREATE OR REPLACE FUNCTION careteam_transfer_batch(
    p_org uuid, p_from uuid, p_to uuid, p_actor text, p_reason text, p_note text,
    p_keep boolean, p_limit integer)
RETURNS TABLE (moved integer, refused_capacity integer, remaining bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch uuid[];
    v_move uuid[];
    v_left uuid[];
    v_promoted uuid[];
    v_active boolean;
    v_capacity bigint;
    v_room bigint;
BEGIN
    v_batch := ARRAY(
        SELECT patient_id FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider
        ORDER BY patient_id LIMIT p_limit);
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = ANY (v_batch)
    ORDER BY id FOR NO KEY UPDATE;
    -- Under the locks: only the patients whose primary is still p_from.
    v_batch := ARRAY(
        SELECT patient_id FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider
          AND patient_id = ANY (v_batch)
        ORDER BY patient_id);
    SELECT active, panel_capacity INTO v_active, v_capacity
    FROM providers WHERE organization_id = p_org AND id = p_to
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    v_room := cardinality(v_batch);
    IF v_capacity IS NOT NULL THEN
        SELECT greatest(0, v_capacity - count(*)) INTO v_room FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_to AND is_primary_provider;
    END IF;
    v_move := v_batch[1:least(v_room, cardinality(v_batch))];
    IF cardinality(v_move) > 0 THEN
        PERFORM careteam_begin_change(p_actor, p_reason, p_note);
        IF p_keep THEN
            WITH demoted AS (
                UPDATE care_team_assignments SET is_primary_provider = false
                WHERE organization_id = p_org AND provider_id = p_from
                  AND patient_id = ANY (v_move)
                RETURNING patient_id
            )
            SELECT array_agg(patient_id ORDER BY patient_id) INTO v_left FROM demoted;
        ELSE
            WITH removed AS (
                DELETE FROM care_team_assignments
                WHERE organization_id = p_org AND provider_id = p_from
                  AND patient_id = ANY (v_move)
                RETURNING patient_id
            )
            SELECT array_agg(patient_id ORDER BY patient_id) INTO v_left FROM removed;
        END IF;
        WITH promoted AS (
            INSERT INTO care_team_assignments
                (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
            SELECT p_org, patient_id, p_to, true, now()
            FROM unnest(v_move) AS patient_id
            ON CONFLICT (organization_id, patient_id, provider_id)
            DO UPDATE SET is_primary_provider = true, assigned_at = now()
            RETURNING patient_id
        )
        SELECT array_agg(patient_id ORDER BY patient_id) INTO v_promoted FROM promoted;
        INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
        SELECT p_org, patient_id, p_from,
               CASE WHEN p_keep THEN 'primary_demoted'
                    ELSE 'provider_removed' END,
               p_from, p_actor, p_reason, p_note, now()
        FROM unnest(v_left) WITH ORDINALITY AS l (patient_id, n)
        ORDER BY n;
        INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)
        SELECT p_org, patient_id, p_to, 'primary_assigned', p_from,
               p_actor, p_reason, p_note, now()
        FROM unnest(v_promoted) WITH ORDINALITY AS m (patient_id, n)
        ORDER BY n;
    END IF;
    RETURN QUERY SELECT cardinality(v_move), cardinality(v_batch) - cardinality(v_move),
        (SELECT count(*) FROM care_team_assignments
         WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider);
END
$$;
