-- careteam_admin_revoke_key v1: revokes an API key of the caller's organization at once
-- (the next transaction of any request with it fails in careteam_enter). Idempotent: a
-- key revoked before keeps its first revoked_at (`already_revoked`). No row for an id
-- that is not one of the organization's keys: another organization's, an access
-- token's, or none. The caller must hold careteam/admin (careteam_admin_caller), and may
-- revoke its own key. SECURITY DEFINER: the application role has no privilege on
-- api_keys.
-- Called by: CredentialAdminService.revoke_key
-- (src/services/credential_admin_service.py, REVOKE_KEY).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_revoke_key(
    p_org uuid, p_caller_key_hash text, p_key_id uuid
)
RETURNS TABLE (revoked_at timestamptz, already_revoked boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_revoked timestamptz;
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    SELECT k.revoked_at INTO v_revoked
    FROM public.api_keys AS k
    WHERE k.organization_id = p_org AND k.id = p_key_id AND k.client_id IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_revoked IS NOT NULL THEN
        RETURN QUERY SELECT v_revoked, true;
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE public.api_keys AS k SET revoked_at = statement_timestamp()
    WHERE k.organization_id = p_org AND k.id = p_key_id
    RETURNING k.revoked_at, false;
END
$$;
