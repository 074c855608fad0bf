-- careteam_admin_issue_key v1: a new API key of the caller's organization, stored as the
-- hash the service computed, with its name and scopes (parsed by src/scopes.py); an API
-- key, never an access token (no client, no expiry). The caller must hold careteam/admin
-- (careteam_admin_caller). SECURITY DEFINER: the application role has no privilege on
-- api_keys.
-- Called by: CredentialAdminService.issue_key
-- (src/services/credential_admin_service.py, ISSUE_KEY).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_issue_key(
    p_org uuid, p_caller_key_hash text, p_key_hash text, p_name text, p_scopes text[]
)
RETURNS TABLE (id uuid, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    RETURN QUERY
    INSERT INTO public.api_keys AS k (organization_id, key_hash, name, scopes)
    VALUES (p_org, p_key_hash, p_name, p_scopes)
    RETURNING k.id, k.created_at;
END
$$;
