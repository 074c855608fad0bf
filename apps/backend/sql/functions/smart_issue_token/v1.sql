-- smart_issue_token v1: one access token for a SMART client whose assertion the token
-- endpoint has checked, in one transaction: the client still live (FOR SHARE, so that a
-- revocation, which takes FOR UPDATE, waits for this token and then revokes it too), the
-- assertion's jti claimed (its primary key: of two requests with one jti, one claims it
-- and the other finds it taken, however they interleave; a jti whose assertion expired
-- may be claimed again), the token stored as a hash in api_keys with its client, scopes
-- and expiry. Also forgets up to 100 of the client's expired assertions and up to 100 of
-- its tokens expired for an hour. Answers `outcome`: 'issued' (with the token's id and
-- expiry), 'client_not_live' or 'jti_replayed' (nothing written).
-- SECURITY DEFINER: the application role has no privilege on the tables it writes.
-- Called by: SmartService.request_token (src/services/smart_service.py, ISSUE_TOKEN).
-- Installed by: revision 20261207_smart_clients.
CREATE FUNCTION public.smart_issue_token(
    p_organization_id uuid, p_client_id uuid, p_jti text, p_jti_expires_at timestamptz,
    p_token_hash text, p_scopes text[], p_lifetime_s integer
)
RETURNS TABLE (outcome text, token_id uuid, token_expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
    v_expires timestamptz := statement_timestamp() + make_interval(secs => p_lifetime_s);
    v_token uuid;
BEGIN
    PERFORM 1 FROM public.smart_clients AS c
    WHERE c.organization_id = p_organization_id AND c.id = p_client_id
      AND c.revoked_at IS NULL
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'client_not_live'::text, NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;

    DELETE FROM public.smart_client_assertions AS a
    WHERE a.organization_id = p_organization_id AND a.client_id = p_client_id
      AND a.jti IN (
          SELECT e.jti FROM public.smart_client_assertions AS e
          WHERE e.organization_id = p_organization_id AND e.client_id = p_client_id
            AND e.expires_at < v_now AND e.jti <> p_jti
          LIMIT 100);

    INSERT INTO public.smart_client_assertions AS a
        (organization_id, client_id, jti, expires_at)
    VALUES (p_organization_id, p_client_id, p_jti, p_jti_expires_at)
    ON CONFLICT (organization_id, client_id, jti) DO UPDATE
        SET expires_at = EXCLUDED.expires_at
        WHERE a.expires_at < v_now;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'jti_replayed'::text, NULL::uuid, NULL::timestamptz;
        RETURN;
    END IF;

    DELETE FROM public.api_keys AS k
    WHERE k.id IN (
        SELECT t.id FROM public.api_keys AS t
        WHERE t.organization_id = p_organization_id AND t.client_id = p_client_id
          AND t.expires_at < v_now - interval '1 hour'
        LIMIT 100);

    INSERT INTO public.api_keys (organization_id, key_hash, scopes, client_id, expires_at)
    VALUES (p_organization_id, p_token_hash, p_scopes, p_client_id, v_expires)
    RETURNING id INTO v_token;
    RETURN QUERY SELECT 'issued'::text, v_token, v_expires;
END
$$;
