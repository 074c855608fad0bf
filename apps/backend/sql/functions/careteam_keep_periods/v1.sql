-- careteam_keep_periods v1: every change to care_team_assignments changes its periods,
-- in the same transaction, at the transaction's instant (now()), with the actor, reason
-- and note the writer set (careteam_begin_change; none set: `other`, by its login).
-- Called by: trigger careteam_keep_periods (AFTER INSERT OR DELETE OR UPDATE ON
-- care_team_assignments), whoever writes: the service, the dedupe, manual SQL.
-- Installed by: revision 20261128_care_team_periods.
CREATE OR REPLACE FUNCTION careteam_keep_periods() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(nullif(current_setting('careteam.actor', true), ''), current_user);
    v_reason text := coalesce(nullif(current_setting('careteam.reason', true), ''), 'other');
    v_note text := nullif(current_setting('careteam.note', true), '');
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (OLD.organization_id, OLD.patient_id,
            OLD.provider_id) IS DISTINCT FROM (NEW.organization_id, NEW.patient_id,
            NEW.provider_id)) THEN
        PERFORM careteam_change_period(OLD.organization_id, OLD.patient_id, OLD.provider_id,
                                       NULL, now(), v_actor, v_reason, v_note);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM careteam_change_period(
            NEW.organization_id, NEW.patient_id, NEW.provider_id,
            CASE WHEN NEW.is_primary_provider THEN 'primary' ELSE 'secondary' END,
            now(), v_actor, v_reason, v_note);
    END IF;
    RETURN NULL;
END
$$;
