-- careteam_enter v1: the first statement of every transaction the service runs: sets the
-- tenant (transaction-local) and, when the request came with an API key, checks that the
-- key is live and belongs to that organization (SQLSTATE CT007 otherwise).
-- Called by: the service's transactions (src/services/transaction.py,
-- tenant_statement); careteam_care_team, careteam_care_team_as_of, careteam_write.
-- Installed by: revision 20261206_one_round_trip.
CREATE OR REPLACE FUNCTION public.careteam_enter(p_org uuid, p_key_hash text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_key_hash IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM public.authenticate_api_key(p_key_hash) AS k
        WHERE k.organization_id = p_org
    ) THEN
        RAISE EXCEPTION 'the API key is not live for this organization'
            USING ERRCODE = 'CT007';
    END IF;
    PERFORM pg_catalog.set_config('app.current_organization_id', p_org::text, true);
END
$$;
