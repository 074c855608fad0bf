-- careteam_claim_transfer v1: one panel transfer at a time per provider, as source or
-- target: takes a session-level advisory lock on each of the two providers (in a fixed
-- order), or raises CT011 when another transfer holds either (and takes neither). The
-- locks last as long as the caller's session: the transfer keeps one connection from
-- its first check to its last batch and closes it at the end, so a transfer that
-- crashes frees them at once. Two opposite transfers (X to Y, Y to X) can no longer
-- interleave: the second is refused, and the outcome is the first's alone.
-- Called by: PanelService.transfer_panel, run and dry run alike
-- (src/services/panel_service.py, CLAIM_TRANSFER).
-- Installed by: revision 20261207_one_transfer_at_a_time.
CREATE OR REPLACE FUNCTION public.careteam_claim_transfer(
    p_org uuid, p_from uuid, p_to uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_first bigint := pg_catalog.hashtextextended(
        'careteam_transfer:' || p_org || ':' || least(p_from, p_to), 0);
    v_second bigint := pg_catalog.hashtextextended(
        'careteam_transfer:' || p_org || ':' || greatest(p_from, p_to), 0);
BEGIN
    IF NOT pg_catalog.pg_try_advisory_lock(v_first) THEN
        RAISE EXCEPTION USING ERRCODE = 'CT011',
            MESSAGE = 'another transfer of one of these providers is running';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(v_second) THEN
        PERFORM pg_catalog.pg_advisory_unlock(v_first);
        RAISE EXCEPTION USING ERRCODE = 'CT011',
            MESSAGE = 'another transfer of one of these providers is running';
    END IF;
END
$$;
