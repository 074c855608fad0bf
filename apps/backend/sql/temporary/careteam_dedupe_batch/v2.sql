-- pg_temp.careteam_dedupe_batch v2: as v1, where the schema has reasons and periods:
-- the events say data_correction with the detail as their note, and the period trigger
-- closes and opens the periods with the same reason (careteam_begin_change).
-- Called by: src/primary_dedupe.py (dedupe), once per batch, from revision
-- 20261128_care_team_periods on.
-- Installed by: src/primary_dedupe.py, in its session's pg_temp: `careteam check --fix
-- --execute` (v1 stays for a schema before that revision).
CREATE OR REPLACE FUNCTION pg_temp.careteam_dedupe_batch(p_batch bigint, p_actor text)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    n_demoted bigint;
BEGIN
    PERFORM 1
    FROM patients AS p
    JOIN pg_temp.careteam_dedupe_batch AS b
        ON b.organization_id = p.organization_id AND b.patient_id = p.id
    WHERE b.batch = p_batch
    ORDER BY p.organization_id, p.id
    FOR NO KEY UPDATE OF p;
    PERFORM careteam_begin_change(p_actor, 'data_correction', 'duplicate primary demoted to secondary');
    WITH ranked AS (
        SELECT a.id, a.organization_id, a.patient_id, a.provider_id,
               row_number() OVER w AS rank,
               first_value(a.provider_id) OVER w AS kept_provider_id
        FROM care_team_assignments AS a
        JOIN pg_temp.careteam_dedupe_batch AS b
            ON b.organization_id = a.organization_id AND b.patient_id = a.patient_id
        WHERE b.batch = p_batch AND a.is_primary_provider
        WINDOW w AS (PARTITION BY a.organization_id, a.patient_id
                     ORDER BY a.assigned_at DESC, a.id DESC)
    ), demoted AS (
        UPDATE care_team_assignments AS a
        SET is_primary_provider = false
        FROM ranked AS r
        WHERE a.id = r.id AND r.rank > 1
        RETURNING a.organization_id, a.patient_id, a.provider_id, a.id, r.kept_provider_id
    )
    INSERT INTO care_team_events
        (organization_id, patient_id, provider_id, event_type,
         previous_primary_provider_id, actor, reason, note)
    SELECT organization_id, patient_id, provider_id, 'migration_dedupe',
           provider_id, p_actor, 'data_correction', 'duplicate primary demoted to secondary (assignment ' || id || '); kept provider ' || kept_provider_id
    FROM demoted;

    GET DIAGNOSTICS n_demoted = ROW_COUNT;
    RETURN n_demoted;
END
$$;
