-- careteam_admin_caller v1: the first check of every credential-management function: the
-- caller's credential (an API key or a SMART access token, by its hash) is live for the
-- organization (SQLSTATE CT007 otherwise) and carries careteam/admin (CT012 otherwise).
-- It returns the credential's id, its row locked FOR SHARE: a revocation of the caller
-- (of the key, or of a token's client) waits for the operation, and an operation that
-- comes after a revocation's commit finds the caller revoked. Not SECURITY DEFINER: it
-- runs as the definer functions that call it; the application role may not call it.
-- Called by: careteam_admin_issue_key, careteam_admin_keys, careteam_admin_revoke_key,
-- careteam_admin_register_client, careteam_admin_clients, careteam_admin_revoke_client.
-- Installed by: revision 20261207_credential_admin.
CREATE FUNCTION public.careteam_admin_caller(p_org uuid, p_caller_key_hash text)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key uuid;
    v_scopes text[];
BEGIN
    SELECT k.api_key_id, k.scopes INTO v_key, v_scopes
    FROM public.authenticate_api_key(p_caller_key_hash) AS k
    WHERE k.organization_id = p_org;
    IF v_key IS NOT NULL THEN
        -- The row itself, locked: a revocation committed since the check above is seen.
        PERFORM 1 FROM public.api_keys AS a
        WHERE a.organization_id = p_org AND a.id = v_key AND a.revoked_at IS NULL
        FOR SHARE;
        IF NOT FOUND THEN
            v_key := NULL;
        END IF;
    END IF;
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'the API key is not live for this organization'
            USING ERRCODE = 'CT007';
    END IF;
    IF NOT coalesce('careteam/admin' = ANY (v_scopes), false) THEN
        RAISE EXCEPTION 'managing keys and clients needs the scope careteam/admin'
            USING ERRCODE = 'CT012';
    END IF;
    RETURN v_key;
END
$$;
