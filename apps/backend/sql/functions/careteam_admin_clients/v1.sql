-- careteam_admin_clients v1: a page of the caller's organization's SMART clients, oldest
-- first (created_at, then id), after the position (p_after_created_at, p_after_id) when
-- given: id, name, the JWKS URL or how many keys are registered, scopes, registered and
-- revoked (never a key). The caller must hold careteam/admin (careteam_admin_caller).
-- SECURITY DEFINER: the application role has no privilege on smart_clients.
-- Called by: CredentialAdminService.list_clients
-- (src/services/credential_admin_service.py, LIST_CLIENTS).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_clients(
    p_org uuid, p_caller_key_hash text, p_after_created_at timestamptz, p_after_id uuid,
    p_limit integer
)
RETURNS TABLE (
    id uuid, name text, jwks_url text, keys integer, scopes text[],
    created_at timestamptz, revoked_at timestamptz
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    RETURN QUERY
    SELECT c.id, c.name, c.jwks_url, coalesce(jsonb_array_length(c.jwks -> 'keys'), 0),
           c.scopes, c.created_at, c.revoked_at
    FROM public.smart_clients AS c
    WHERE c.organization_id = p_org
      AND (p_after_id IS NULL OR (c.created_at, c.id) > (p_after_created_at, p_after_id))
    ORDER BY c.created_at, c.id
    LIMIT p_limit;
END
$$;
