-- careteam_rule_status v1: the last check of the one-primary rule (patients with several
-- primaries, patients with a team but no primary, whether the unique index is valid):
-- the stored result while younger than max_age_s, otherwise recounted by one session
-- (the advisory lock 7161130662565863789 is b"careteam" read as an integer; the other
-- sessions answer the stored result). SECURITY DEFINER: counts only, no tenant data.
-- Called by: the API's metrics (src/api/app.py, RULE_STATUS).
-- Installed by: revision 20261128_app_role_login.
CREATE OR REPLACE FUNCTION careteam_rule_status(max_age_s double precision)
RETURNS TABLE (checked_at timestamptz, several_primaries bigint, without_primary bigint,
               index_valid boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM public.careteam_rule_checks AS c
        WHERE c.checked_at > clock_timestamp() - make_interval(secs => max_age_s)
    ) AND pg_try_advisory_xact_lock(7161130662565863789) THEN
        INSERT INTO public.careteam_rule_checks AS c
            (checked_at, several_primaries, without_primary, index_valid)
        SELECT clock_timestamp(),
               count(*) FILTER (WHERE g.primaries > 1),
               count(*) FILTER (WHERE g.primaries = 0),
               (SELECT i.indisvalid
                FROM pg_index AS i
                JOIN pg_class AS r ON r.oid = i.indexrelid
                WHERE r.relname = 'idx_unique_primary_provider_per_patient'
                  AND r.relnamespace = 'public'::regnamespace)
        FROM (
            SELECT count(*) FILTER (WHERE is_primary_provider) AS primaries
            FROM public.care_team_assignments
            GROUP BY organization_id, patient_id
        ) AS g
        ON CONFLICT (id) DO UPDATE SET
            checked_at = excluded.checked_at,
            several_primaries = excluded.several_primaries,
            without_primary = excluded.without_primary,
            index_valid = excluded.index_valid;
    END IF;
    RETURN QUERY
        SELECT c.checked_at, c.several_primaries, c.without_primary, c.index_valid
        FROM public.careteam_rule_checks AS c;
END
$$;
