-- authenticate_api_key v3: the (key id, organization id, scopes, client id, expiry) of a
-- live credential, found by its SHA-256 hash: an API key not revoked (client_id and
-- expires_at null), or a SMART access token (client_id set) not revoked, not past its
-- expires_at, whose client is not revoked; nothing for anything else. SECURITY DEFINER:
-- the application role has no privilege on api_keys or smart_clients and checks a
-- credential only through this.
-- Called by: OrganizationService (src/services/organization_service.py, AUTHENTICATE)
-- and careteam_enter, so every transaction of a request checks its key or token again.
-- Installed by: revision 20261207_smart_clients, replacing v2 (no client, no expiry),
-- which its downgrade puts back.
CREATE FUNCTION authenticate_api_key(p_key_hash text)
RETURNS TABLE (
    api_key_id uuid, organization_id uuid, scopes text[], client_id uuid,
    expires_at timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.id, k.organization_id, k.scopes, k.client_id, k.expires_at
    FROM public.api_keys AS k
    WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > statement_timestamp())
      AND (k.client_id IS NULL OR EXISTS (
          SELECT 1 FROM public.smart_clients AS c
          WHERE c.organization_id = k.organization_id AND c.id = k.client_id
            AND c.revoked_at IS NULL))
$$;
