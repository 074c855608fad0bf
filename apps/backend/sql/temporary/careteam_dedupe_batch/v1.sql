-- pg_temp.careteam_dedupe_batch v1: one batch of the dedupe, one transaction: takes the
-- service's patient lock in (organization, patient) order, then, with a fresh snapshot
-- under the lock, keeps each patient's latest primary and demotes the others, each
-- demotion a migration_dedupe event whose reason names the assignment and the kept
-- provider.
-- Called by: src/primary_dedupe.py (dedupe), once per batch, where the schema has no
-- reasons yet (before revision 20261128_care_team_periods).
-- Installed by: src/primary_dedupe.py, in its session's pg_temp: revision
-- 20260114_unique_primary, and `careteam check --fix --execute` on such a schema.
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
         previous_primary_provider_id, actor, reason)
    SELECT organization_id, patient_id, provider_id, 'migration_dedupe',
           provider_id, p_actor, 'duplicate primary demoted to secondary (assignment ' || id || '); kept provider ' || kept_provider_id
    FROM demoted;

    GET DIAGNOSTICS n_demoted = ROW_COUNT;
    RETURN n_demoted;
END
$$;
