-- careteam_begin_change v1: who and why, for the period trigger and the events of this
-- transaction (the transaction-local settings careteam.actor, careteam.reason and
-- careteam.note).
-- Called by: the write functions (careteam_assign_primary, careteam_add_secondary,
-- careteam_remove_member, careteam_transfer_batch) and the dedupe's batch
-- (sql/temporary/careteam_dedupe_batch/v2.sql).
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_begin_change(p_actor text, p_reason text, p_note text)
RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('careteam.actor', p_actor, true),
           set_config('careteam.reason', p_reason, true),
           set_config('careteam.note', coalesce(p_note, ''), true)
$$;
