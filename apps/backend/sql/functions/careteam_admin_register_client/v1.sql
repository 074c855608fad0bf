-- careteam_admin_register_client v1: a new SMART Backend Services client of the caller's
-- organization, with its public keys (a JWK Set) or its JWKS URL, exactly one, and its
-- scopes, as the service checked them (src/services/smart_keys.py, src/scopes.py). The
-- caller must hold careteam/admin (careteam_admin_caller). SECURITY DEFINER: the
-- application role has no privilege on smart_clients.
-- Called by: CredentialAdminService.register_client
-- (src/services/credential_admin_service.py, REGISTER_CLIENT).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_register_client(
    p_org uuid, p_caller_key_hash text, p_name text, p_jwks jsonb, p_jwks_url text,
    p_scopes text[]
)
RETURNS TABLE (id uuid, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    RETURN QUERY
    INSERT INTO public.smart_clients AS c (organization_id, name, jwks, jwks_url, scopes)
    VALUES (p_org, p_name, p_jwks, p_jwks_url, p_scopes)
    RETURNING c.id, c.created_at;
END
$$;
