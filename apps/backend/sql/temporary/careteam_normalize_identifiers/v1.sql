-- pg_temp.careteam_normalize_identifiers v1: one batch of the backfill that brings the patient
-- identifiers written before the rule into the form they are compared in: Unicode NFC,
-- without surrounding whitespace. The next p_limit patients with identifiers after
-- (p_org, p_patient), in (organization, patient) order, are locked (as every writer of
-- a patient locks it); each identifier whose normal form differs from it and is free
-- (no other identifier of the organization has it, in the table or in this batch) is
-- rewritten, and each patient changed gets a record change (fields {identifiers}, the
-- actor p_actor) and a new version, as a correction through the API would. One that
-- would collide is left as it is: `careteam check` reports it. Returns the last
-- (organization, patient) of the batch and how many identifiers it rewrote; no row
-- once nothing is left.
-- Called by: revision 20261207_normalized_identifiers (its _backfill), in pg_temp.
-- Installed by: revision 20261207_normalized_identifiers, for its session only.
CREATE OR REPLACE FUNCTION pg_temp.careteam_normalize_identifiers(
    p_org uuid, p_patient uuid, p_limit integer, p_actor text)
RETURNS TABLE (last_org uuid, last_patient uuid, normalized integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_last record;
    v_normalized integer;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS careteam_identifier_batch (
        organization_id uuid, patient_id uuid, system text, value text,
        n_system text, n_value text) ON COMMIT DROP;
    TRUNCATE careteam_identifier_batch;
    INSERT INTO careteam_identifier_batch
    SELECT i.organization_id, i.patient_id, i.system, i.value,
           normalize(regexp_replace(i.system, '^[[:space:]]+|[[:space:]]+$', '', 'g'), NFC),
           normalize(regexp_replace(i.value, '^[[:space:]]+|[[:space:]]+$', '', 'g'), NFC)
    FROM public.patient_identifiers AS i
    JOIN (SELECT p.organization_id, p.id FROM public.patients AS p
          WHERE (p.organization_id, p.id) > (p_org, p_patient)
            AND EXISTS (SELECT 1 FROM public.patient_identifiers AS x
                        WHERE x.organization_id = p.organization_id AND x.patient_id = p.id)
          ORDER BY p.organization_id, p.id
          LIMIT p_limit
          FOR NO KEY UPDATE OF p) AS locked
        ON locked.organization_id = i.organization_id AND locked.id = i.patient_id;
    SELECT b.organization_id, b.patient_id INTO v_last
    FROM careteam_identifier_batch AS b
    ORDER BY b.organization_id DESC, b.patient_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH movable AS (
        SELECT b.* FROM careteam_identifier_batch AS b
        WHERE (b.n_system, b.n_value) <> (b.system, b.value)
          AND b.n_system <> '' AND b.n_value <> ''
          AND NOT EXISTS (
              SELECT 1 FROM public.patient_identifiers AS o
              WHERE o.organization_id = b.organization_id
                AND o.system = b.n_system AND o.value = b.n_value)
          AND (SELECT count(*) FROM careteam_identifier_batch AS t
               WHERE t.organization_id = b.organization_id
                 AND t.n_system = b.n_system AND t.n_value = b.n_value) = 1
    ), moved AS (
        UPDATE public.patient_identifiers AS i
        SET system = m.n_system, value = m.n_value
        FROM movable AS m
        WHERE i.organization_id = m.organization_id
          AND i.system = m.system AND i.value = m.value
        RETURNING i.organization_id, i.patient_id
    ), patients_changed AS (
        SELECT DISTINCT organization_id, patient_id FROM moved
    ), versioned AS (
        UPDATE public.patients AS p SET version = p.version + 1
        FROM patients_changed AS c
        WHERE p.organization_id = c.organization_id AND p.id = c.patient_id
        RETURNING p.organization_id, p.id
    ), recorded AS (
        INSERT INTO public.record_changes
            (organization_id, record_type, record_id, seq, action, fields, actor)
        SELECT v.organization_id, 'patient', v.id,
               coalesce((SELECT max(r.seq) FROM public.record_changes AS r
                         WHERE r.organization_id = v.organization_id
                           AND r.record_type = 'patient' AND r.record_id = v.id), 0) + 1,
               'updated', ARRAY['identifiers'], p_actor
        FROM versioned AS v
    )
    SELECT count(*) INTO v_normalized FROM moved;
    RETURN QUERY SELECT v_last.organization_id, v_last.patient_id, v_normalized;
END
$$;
