-- authenticate_api_key v2: the (key id, organization id, scopes) of a live API key,
-- found by its SHA-256 hash; nothing for a revoked or unknown one. SECURITY DEFINER: the
-- application role has no privilege on api_keys and checks a key only through this.
-- Called by: OrganizationService (src/services/organization_service.py, AUTHENTICATE)
-- and careteam_enter.
-- Installed by: revision 20261207_key_scopes, replacing v1 (which returned no scopes),
-- which its downgrade puts back.
CREATE FUNCTION authenticate_api_key(p_key_hash text)
RETURNS TABLE (api_key_id uuid, organization_id uuid, scopes text[])
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.organization_id, k.scopes
    FROM public.api_keys AS k
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
$$;
