-- careteam_claim_key v1: takes a write's Idempotency-Key for the transaction it runs in,
-- or answers with what the key holds. Returns NULL when the key is now this
-- transaction's (the write runs, and careteam_store_result stores its result before
-- COMMIT), or the result stored by the request first sent with the key (the write does
-- not run again). Raises CT009 when the key came with another request (a different
-- fingerprint), or holds a response stored by the release before this one, which cannot
-- be replayed; CT010 while the request that holds the key still runs.
-- A key is its organization's for 24 hours: an expired key is taken as new, and each
-- claim also deletes up to ten other expired keys of the organization (ones another
-- writer is deleting are skipped, never waited for). A second request with a key whose
-- claim has not committed waits for it (the primary key), then gets its result.
-- p_owned: the caller runs several transactions under the key (a panel transfer), so
-- the claim commits on its own, in progress, and the caller's session holds a
-- session-level advisory lock on the key while it runs. A retry takes an in-progress
-- claim over when that lock is free (the owner's process or connection is gone), at
-- once, and never while the owner's session lives, however long it runs. An in-progress
-- claim of the release before (its body the owner's token) is taken over after 15
-- minutes, as that release did.
-- Called by: careteam_change_team; src/services/idempotency.py (CLAIM).
-- Installed by: revision 20261207_one_write_path.
CREATE OR REPLACE FUNCTION public.careteam_claim_key(
    p_org uuid, p_key text, p_fingerprint text, p_owned boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_lock bigint := pg_catalog.hashtextextended('careteam_key:' || p_org || ':' || p_key, 0);
    v_held public.idempotency_keys%ROWTYPE;
BEGIN
    DELETE FROM public.idempotency_keys AS k
    WHERE k.organization_id = p_org AND k.created_at < now() - interval '24 hours'
      AND ((k.key = p_key AND (k.result IS NOT NULL OR k.status_code <> 0))
           OR k.ctid = ANY (ARRAY(
               SELECT o.ctid FROM public.idempotency_keys AS o
               WHERE o.organization_id = p_org AND o.key <> p_key
                 AND o.created_at < now() - interval '24 hours'
                 AND (o.result IS NOT NULL OR o.status_code <> 0)
               LIMIT 10 FOR UPDATE SKIP LOCKED)));
    INSERT INTO public.idempotency_keys (organization_id, key, fingerprint, status_code, body)
    VALUES (p_org, p_key, p_fingerprint, 0, ''::bytea)
    ON CONFLICT (organization_id, key) DO NOTHING;
    IF FOUND THEN
        IF p_owned AND NOT pg_catalog.pg_try_advisory_lock(v_lock) THEN
            RAISE EXCEPTION USING ERRCODE = 'CT010',
                MESSAGE = 'the request first sent with this key is still running';
        END IF;
        RETURN NULL;
    END IF;
    SELECT * INTO v_held FROM public.idempotency_keys AS k
    WHERE k.organization_id = p_org AND k.key = p_key;
    IF NOT FOUND THEN  -- expired and deleted meanwhile: the client sends it again
        RAISE EXCEPTION USING ERRCODE = 'CT010',
            MESSAGE = 'the request first sent with this key is still running';
    END IF;
    IF v_held.fingerprint <> p_fingerprint THEN
        RAISE EXCEPTION USING ERRCODE = 'CT009',
            MESSAGE = 'this key was sent with another request';
    END IF;
    IF v_held.result IS NOT NULL THEN
        RETURN v_held.result;
    END IF;
    IF v_held.status_code <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CT009',
            MESSAGE = 'this key holds a response of an earlier release',
            DETAIL = 'earlier release';
    END IF;
    IF p_owned AND (v_held.body = ''::bytea
                    OR v_held.created_at < now() - interval '15 minutes')
       AND pg_catalog.pg_try_advisory_lock(v_lock) THEN
        UPDATE public.idempotency_keys AS k SET body = ''::bytea
        WHERE k.organization_id = p_org AND k.key = p_key;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'CT010',
        MESSAGE = 'the request first sent with this key is still running';
END
$$;
