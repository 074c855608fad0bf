-- pg_temp.careteam_backfill_periods v1: one batch of the periods' backfill, one
-- transaction: the next p_batch patients after (p_after_org, p_after_patient), locked
-- as the service locks them; each one's periods rebuilt from its events (in the order
-- they were written), then from its current assignments for what the events do not
-- explain. Returns the last patient done.
-- Called by: revision 20261128_care_team_periods (_backfill), once per batch.
-- Installed by: revision 20261128_care_team_periods, in its own session's pg_temp.
CREATE OR REPLACE FUNCTION pg_temp.careteam_backfill_periods(
    p_after_org uuid, p_after_patient uuid, p_batch integer, p_actor text)
RETURNS TABLE (last_org uuid, last_patient uuid, patients integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_patients record;
    v_event record;
    v_assignment record;
    v_reason text;
    v_role text;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS careteam_backfill_batch
        (organization_id uuid, patient_id uuid) ON COMMIT DELETE ROWS;
    INSERT INTO careteam_backfill_batch
    SELECT organization_id, id FROM patients
    WHERE (organization_id, id) > (p_after_org, p_after_patient)
    ORDER BY organization_id, id
    LIMIT p_batch
    FOR NO KEY UPDATE;
    -- The statements that read care_team_periods are EXECUTEd: planned for each batch
    -- on the table as it is now (a plan cached at the first batch, on an empty table,
    -- would scan the whole table in every later one).
    EXECUTE 'DELETE FROM care_team_periods AS pe USING careteam_backfill_batch AS b
             WHERE pe.organization_id = b.organization_id AND pe.patient_id = b.patient_id';
    -- Patients without history (most, on data from before events were kept): one
    -- period per assignment, from its time, in one statement.
    INSERT INTO care_team_periods
        (organization_id, patient_id, provider_id, role, valid, started_by, start_reason,
         start_note)
    SELECT a.organization_id, a.patient_id, a.provider_id,
           CASE WHEN a.is_primary_provider THEN 'primary' ELSE 'secondary' END,
           tstzrange(a.assigned_at, NULL), p_actor, 'data_correction',
           'opened from the assignment: no event explains it'
    FROM care_team_assignments AS a
    JOIN careteam_backfill_batch AS b
        ON b.organization_id = a.organization_id AND b.patient_id = a.patient_id
    WHERE NOT EXISTS (
        SELECT 1 FROM care_team_events AS e
        WHERE e.organization_id = a.organization_id AND e.patient_id = a.patient_id);
    -- Patients with history: replay it, change by change.
    FOR v_event IN
        SELECT e.organization_id, e.patient_id, e.provider_id, e.event_type, e.actor,
               e.reason, e.note, e.occurred_at
        FROM care_team_events AS e
        JOIN careteam_backfill_batch AS b
            ON b.organization_id = e.organization_id AND b.patient_id = e.patient_id
        ORDER BY e.organization_id, e.patient_id, e.seq
    LOOP
        v_role := CASE v_event.event_type
            WHEN 'primary_assigned' THEN 'primary'
            WHEN 'secondary_added' THEN 'secondary'
            WHEN 'primary_demoted' THEN 'secondary'
            WHEN 'migration_dedupe' THEN 'secondary'
            ELSE NULL END;
        -- Reasons from before the vocabulary (free text) become `other`, kept as a note.
        v_reason := CASE WHEN v_event.reason IN ('patient_request', 'provider_request', 'provider_left', 'panel_rebalance', 'data_correction', 'other')
                         THEN v_event.reason ELSE 'other' END;
        PERFORM careteam_change_period(
            v_event.organization_id, v_event.patient_id, v_event.provider_id, v_role,
            v_event.occurred_at, v_event.actor, v_reason,
            CASE WHEN v_reason = v_event.reason THEN v_event.note
                 ELSE left(v_event.reason, 500) END);
    END LOOP;
    -- Then the present: every assignment has its open period, in its role.
    FOR v_assignment IN EXECUTE
        'SELECT a.organization_id, a.patient_id, a.provider_id, a.is_primary_provider,
                a.assigned_at
         FROM care_team_assignments AS a
         JOIN careteam_backfill_batch AS b
             ON b.organization_id = a.organization_id AND b.patient_id = a.patient_id
         WHERE NOT EXISTS (
             SELECT 1 FROM care_team_periods AS pe
             WHERE pe.organization_id = a.organization_id AND pe.patient_id = a.patient_id
               AND pe.provider_id = a.provider_id AND upper_inf(pe.valid)
               AND (pe.role = ''primary'') = a.is_primary_provider)
         ORDER BY a.organization_id, a.patient_id, a.is_primary_provider, a.assigned_at'
    LOOP
        PERFORM careteam_change_period(
            v_assignment.organization_id, v_assignment.patient_id, v_assignment.provider_id,
            CASE WHEN v_assignment.is_primary_provider THEN 'primary' ELSE 'secondary' END,
            v_assignment.assigned_at, p_actor, 'data_correction',
            'opened from the assignment: no event explains it');
    END LOOP;
    -- And no open period without an assignment.
    FOR v_assignment IN EXECUTE
        'SELECT pe.organization_id, pe.patient_id, pe.provider_id
         FROM care_team_periods AS pe
         JOIN careteam_backfill_batch AS b
             ON b.organization_id = pe.organization_id AND b.patient_id = pe.patient_id
         WHERE upper_inf(pe.valid) AND NOT EXISTS (
             SELECT 1 FROM care_team_assignments AS a
             WHERE a.organization_id = pe.organization_id AND a.patient_id = pe.patient_id
               AND a.provider_id = pe.provider_id)'
    LOOP
        PERFORM careteam_change_period(
            v_assignment.organization_id, v_assignment.patient_id, v_assignment.provider_id,
            NULL, now(), p_actor, 'data_correction',
            'closed: the provider is not on the team');
    END LOOP;
    RETURN QUERY
        SELECT b.organization_id, b.patient_id,
               (SELECT count(*)::integer FROM careteam_backfill_batch)
        FROM careteam_backfill_batch AS b
        ORDER BY b.organization_id DESC, b.patient_id DESC
        LIMIT 1;
END
$$;
