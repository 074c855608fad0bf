-- number_care_team_event v1 (transitional): while the events are being numbered, a new
-- event gets its organization's next number only where the organization is numbered
-- already (ready); it takes the counter's row lock either way, so that the backfill's
-- batch and the insert queue.
-- Called by: trigger number_care_team_event (BEFORE INSERT ON care_team_events).
-- Installed by: revision 20261128_event_sequence, before its backfill (v2 replaces it
-- in the same revision once every organization is numbered).
CREATE OR REPLACE FUNCTION number_care_team_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    is_ready boolean;
    next_seq bigint;
BEGIN
    INSERT INTO care_team_event_sequences AS s (organization_id, last_seq, ready)
    VALUES (NEW.organization_id, 1, true)
    ON CONFLICT (organization_id) DO UPDATE
        SET last_seq = s.last_seq + CASE WHEN s.ready THEN 1 ELSE 0 END
    RETURNING s.ready, s.last_seq INTO is_ready, next_seq;
    IF is_ready THEN
        NEW.seq := next_seq;
    END IF;
    RETURN NEW;
END
$$;
