-- authenticate_api_key v1: the (key id, organization id) of a live API key, found by
-- its SHA-256 hash; nothing for a revoked or unknown one. SECURITY DEFINER: the
-- application role has no privilege on api_keys and checks a key only through this.
-- Called by: OrganizationService (src/services/organization_service.py, AUTHENTICATE)
-- and careteam_enter.
-- Installed by: revision 20260114_rls_coverage.
CREATE FUNCTION authenticate_api_key(p_key_hash text)
RETURNS TABLE (api_key_id uuid, organization_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.organization_id
    FROM public.api_keys AS k
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
$$;
