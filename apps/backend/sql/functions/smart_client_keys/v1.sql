-- smart_client_keys v1: what the token endpoint needs to check a SMART client's
-- assertion: the organization, the public keys (a JWKS) or the URL to fetch them from,
-- and the registered scopes of a live client (registered, not revoked); nothing for any
-- other id. SECURITY DEFINER: the application role has no privilege on smart_clients.
-- Called by: SmartService.request_token (src/services/smart_service.py, CLIENT_KEYS).
-- Installed by: revision 20261207_smart_clients.
CREATE FUNCTION public.smart_client_keys(p_client_id uuid)
RETURNS TABLE (organization_id uuid, jwks jsonb, jwks_url text, scopes text[])
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.organization_id, c.jwks, c.jwks_url, c.scopes
    FROM public.smart_clients AS c
    WHERE c.id = p_client_id AND c.revoked_at IS NULL
$$;
