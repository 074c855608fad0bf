-- number_care_team_event v2: a new event gets the next number (seq) of its
-- organization. The counter's row stays locked until the transaction ends, so numbers
-- follow commit order and have no gaps.
-- Called by: trigger number_care_team_event (BEFORE INSERT ON care_team_events), on
-- every insert, whoever writes.
-- Installed by: revision 20261128_event_sequence, replacing v1 (its transitional form)
-- once its backfill is done; its downgrade drops the function.
CREATE OR REPLACE FUNCTION number_care_team_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO care_team_event_sequences AS s (organization_id, last_seq)
    VALUES (NEW.organization_id, 1)
    ON CONFLICT (organization_id) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO NEW.seq;
    RETURN NEW;
END
$$;
