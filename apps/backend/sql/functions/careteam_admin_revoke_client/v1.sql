-- careteam_admin_revoke_client v1: revokes a SMART client of the caller's organization
-- and every token it holds, in one transaction: they stop working at once. The client's
-- row is locked FOR UPDATE first (smart_issue_token holds it FOR SHARE), so the token
-- update, a statement of its own with a later snapshot, sees every token issued before.
-- Idempotent: a client revoked before keeps its first revoked_at (`already_revoked`);
-- its tokens are revoked all the same. No row for an id that is not one of the
-- organization's clients. The caller must hold careteam/admin (careteam_admin_caller),
-- and may be a token of this very client. SECURITY DEFINER: the application role has no
-- privilege on smart_clients or api_keys.
-- Called by: CredentialAdminService.revoke_client
-- (src/services/credential_admin_service.py, REVOKE_CLIENT).
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_revoke_client(
    p_org uuid, p_caller_key_hash text, p_client_id uuid
)
RETURNS TABLE (revoked_at timestamptz, already_revoked boolean, tokens_revoked integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_revoked timestamptz;
    v_now timestamptz := statement_timestamp();
    v_tokens integer;
BEGIN
    PERFORM public.careteam_admin_caller(p_org, p_caller_key_hash);
    SELECT c.revoked_at INTO v_revoked
    FROM public.smart_clients AS c
    WHERE c.organization_id = p_org AND c.id = p_client_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_revoked IS NULL THEN
        UPDATE public.smart_clients AS c SET revoked_at = v_now
        WHERE c.organization_id = p_org AND c.id = p_client_id;
    END IF;
    UPDATE public.api_keys AS k SET revoked_at = v_now
    WHERE k.organization_id = p_org AND k.client_id = p_client_id AND k.revoked_at IS NULL;
    GET DIAGNOSTICS v_tokens = ROW_COUNT;
    RETURN QUERY SELECT coalesce(v_revoked, v_now), v_revoked IS NOT NULL, v_tokens;
END
$$;
