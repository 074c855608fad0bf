-- careteam_admin_keys v1: a page of the caller's organization's API keys, oldest first
-- (created_at, then id), after the position (p_after_created_at, p_after_id) when given:
-- id, name, scopes, created and revoked (never a hash; access tokens are not keys and
-- are left out). The caller must hold careteam/admin (careteam_admin_caller).
-- SECURITY DEFINER: the application role has no privilege on api_keys.
-- Called by: CredentialAdminService.list_keys
-- (src/services/credential_admin_service.py, LIST_KEYS).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_keys(
    p_org uuid, p_caller_key_hash text, p_after_created_at timestamptz, p_after_id uuid,
    p_limit integer
)
RETURNS TABLE (
    id uuid, name text, scopes text[], created_at timestamptz, revoked_at timestamptz
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    RETURN QUERY
    SELECT k.id, k.name, k.scopes, k.created_at, k.revoked_at
    FROM public.api_keys AS k
    WHERE k.organization_id = p_org AND k.client_id IS NULL
      AND (p_after_id IS NULL OR (k.created_at, k.id) > (p_after_created_at, p_after_id))
    ORDER BY k.created_at, k.id
    LIMIT p_limit;
END
$$;
