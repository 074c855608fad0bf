-- careteam_store_result v1: stores the result of a write under the Idempotency-Key that
-- careteam_claim_key gave it, in the write's own transaction (the change and its result
-- commit together, or neither does). p_owned: the key was claimed by an operation of
-- several transactions, whose session releases the key's advisory lock here.
-- Called by: careteam_change_team; src/services/idempotency.py (STORE).
-- Installed by: revision 20261207_one_write_path.
CREATE OR REPLACE FUNCTION public.careteam_store_result(
    p_org uuid, p_key text, p_result jsonb, p_owned boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.idempotency_keys AS k SET result = p_result
    WHERE k.organization_id = p_org AND k.key = p_key;
    IF p_owned THEN
        PERFORM pg_catalog.pg_advisory_unlock(
            pg_catalog.hashtextextended('careteam_key:' || p_org || ':' || p_key, 0));
    END IF;
END
$$;
