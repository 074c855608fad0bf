-- Runbook check: a second primary for one patient must be refused by the index.
-- Creates a throwaway organization inside a transaction that is always rolled back,
-- so it changes nothing. Run as the owner:
--     psql "$DATABASE_URL" -f scripts/verify_unique_primary_index.sql
-- Expected: the last INSERT fails with
--     ERROR:  duplicate key value violates unique constraint "idx_unique_primary_provider_per_patient"
BEGIN;
INSERT INTO organizations (id, name)
VALUES ('00000000-0000-4000-8000-0000000000a1', 'runbook check (rolled back)');
INSERT INTO patients (id, organization_id)
VALUES ('00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-0000000000a1');
INSERT INTO providers (id, organization_id)
VALUES ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000a1'),
       ('00000000-0000-4000-8000-0000000000c2', '00000000-0000-4000-8000-0000000000a1');
INSERT INTO care_team_assignments (organization_id, patient_id, provider_id, is_primary_provider)
VALUES ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000b1',
        '00000000-0000-4000-8000-0000000000c1', true);
-- The second primary: refused.
INSERT INTO care_team_assignments (organization_id, patient_id, provider_id, is_primary_provider)
VALUES ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000b1',
        '00000000-0000-4000-8000-0000000000c2', true);
ROLLBACK;
