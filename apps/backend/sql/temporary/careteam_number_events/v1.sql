-- pg_temp.careteam_number_events v1: one batch of the events' numbering, one
-- transaction: holds the organization's counter row, numbers its oldest unnumbered
-- events after its last number, and marks the organization ready once none is left.
-- Called by: revision 20261128_event_sequence (_number_every_organization), once per
-- batch of each organization.
-- Installed by: revision 20261128_event_sequence, in its own session's pg_temp (gone
-- when that session ends).
CREATE OR REPLACE FUNCTION pg_temp.careteam_number_events(p_org uuid, p_batch integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    numbered integer;
BEGIN
    INSERT INTO care_team_event_sequences AS s (organization_id, last_seq, ready)
    VALUES (p_org, 0, false)
    ON CONFLICT (organization_id) DO UPDATE SET ready = s.ready
    RETURNING s.last_seq INTO last;

    WITH todo AS (
        SELECT id, last + row_number() OVER (ORDER BY id) AS seq
        FROM (
            SELECT id FROM care_team_events
            WHERE organization_id = p_org AND seq IS NULL
            ORDER BY id
            LIMIT p_batch
        ) AS oldest
    )
    UPDATE care_team_events AS e SET seq = todo.seq FROM todo WHERE e.id = todo.id;
    GET DIAGNOSTICS numbered = ROW_COUNT;

    UPDATE care_team_event_sequences
    SET last_seq = last + numbered, ready = numbered < p_batch
    WHERE organization_id = p_org;
    RETURN numbered;
END
$$;
