"""Attribution over time: care team periods, reasons, panels with capacity, and the write
functions that keep them in step.

- `care_team_periods`: per (organization, patient, provider), when each membership held
  which role (`primary` or `secondary`), as a `tstzrange` (open while current), with who
  and why it began and ended. PostgreSQL forbids, by exclusion constraints (btree_gist),
  two overlapping primary periods of one patient, and two overlapping periods of one
  provider for one patient: the rule holds at every instant, not only now.
- Periods are kept in step with `care_team_assignments` by a trigger on it
  (careteam_keep_periods), in the same transaction as every change, whoever makes it:
  the service, the dedupe, `careteam check --fix`, manual SQL. So the current state
  always equals the open periods. The reason, note and actor of the change come from
  transaction-local settings (`careteam.reason`, `careteam.note`, `careteam.actor`) that
  the writer sets; a writer that sets none is recorded as `other`, by its login.
- Reasons are one vocabulary (`patient_request`, `provider_request`, `provider_left`,
  `panel_rebalance`, `data_correction`, `other`), on events and periods, with an
  optional note of at most 500 characters (events gain a `note`).
- `providers.panel_capacity` (NULL: no limit); an index on current primaries by provider
  for panel sizes.
- The service's writes are functions (careteam_assign_primary, careteam_add_secondary,
  careteam_remove_member, careteam_transfer_batch): each takes the patient lock first and
  the provider lock after it, as every writer does, so they cannot deadlock each other;
  a primary assignment locks its provider, so a panel's capacity holds under any
  concurrency. They raise errors with SQLSTATEs of class CT (see ERRORS below).

Online: one short transaction creates the table, the trigger and the functions; then
every patient's periods are built, in batches of patients under the service's patient
lock, from its events (its history) and its current assignments (whatever the events do
not explain opens at the assignment's time as a `data_correction`). A patient changed
meanwhile keeps its periods in step through the trigger, and its batch rebuilds them
from the events anyway. Re-running after a failure is safe.

downgrade() drops the functions, the trigger and the periods (the events hold their
history: applying this again rebuilds them); it keeps the notes and capacities written
meanwhile (`care_team_events.note`, `providers.panel_capacity`), which the earlier
release does not read, so that a rollback loses nothing.

Revision ID: 20261128_care_team_periods
Revises: 20261128_app_role_login
Create Date: 2026-11-28
"""

import itertools
import logging
import time
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from src.config import get_settings
from src.models.care_team import (
    NOTE_MAX_LENGTH,
    ChangeReason,
    EventType,
    PeriodRole,
    one_of,
)

revision: str = "20261128_care_team_periods"
down_revision: str | None = "20261128_app_role_login"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_SIZE = 500  # patients per batch: a writer waits for at most one batch
PROGRESS_EVERY_S = 10
logger = logging.getLogger("alembic.runtime.migration")
CURRENT_TENANT = "NULLIF(current_setting('app.current_organization_id', true), '')::uuid"
PRIMARY, SECONDARY = PeriodRole.PRIMARY.value, PeriodRole.SECONDARY.value
OTHER, CORRECTION = ChangeReason.OTHER.value, ChangeReason.DATA_CORRECTION.value

# The write functions raise SQLSTATEs of class CT: CT001 patient not found, CT002
# provider not found, CT003 provider inactive, CT004 provider already primary, CT005
# provider not on the care team, CT006 panel full (src/services/care_team_service.py maps
# them to the service's errors).

CREATE_PERIODS = f"""
CREATE TABLE IF NOT EXISTS care_team_periods (
    organization_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    patient_id uuid NOT NULL,
    provider_id uuid NOT NULL,
    role text NOT NULL,
    valid tstzrange NOT NULL,
    started_by text NOT NULL,
    start_reason text NOT NULL,
    start_note text,
    ended_by text,
    end_reason text,
    end_note text,
    CONSTRAINT pk_care_team_periods PRIMARY KEY (organization_id, id),
    CONSTRAINT fk_care_team_periods_organization_id_patient_id_patients
        FOREIGN KEY (organization_id, patient_id)
        REFERENCES patients (organization_id, id) ON DELETE RESTRICT,
    CONSTRAINT fk_care_team_periods_organization_id_provider_id_providers
        FOREIGN KEY (organization_id, provider_id)
        REFERENCES providers (organization_id, id) ON DELETE RESTRICT,
    CONSTRAINT ck_care_team_periods_role CHECK ({one_of("role", PeriodRole)}),
    CONSTRAINT ck_care_team_periods_valid CHECK (NOT isempty(valid) AND NOT lower_inf(valid)),
    CONSTRAINT ck_care_team_periods_start_reason CHECK ({one_of("start_reason", ChangeReason)}),
    CONSTRAINT ck_care_team_periods_end_reason
        CHECK (end_reason IS NULL OR {one_of("end_reason", ChangeReason)}),
    CONSTRAINT ck_care_team_periods_ended CHECK (upper_inf(valid) = (end_reason IS NULL)),
    CONSTRAINT ck_care_team_periods_notes CHECK (
        coalesce(length(start_note), 0) <= {NOTE_MAX_LENGTH}
        AND coalesce(length(end_note), 0) <= {NOTE_MAX_LENGTH}),
    CONSTRAINT excl_care_team_periods_one_primary EXCLUDE USING gist
        (patient_id WITH =, organization_id WITH =, valid WITH &&) WHERE (role = '{PRIMARY}'),
    CONSTRAINT excl_care_team_periods_one_per_provider EXCLUDE USING gist
        (patient_id WITH =, organization_id WITH =, provider_id WITH =, valid WITH &&)
)
"""

# The exclusion constraints' GiST indexes lead with patient_id. GiST splits a full page on
# its first column; led by organization_id (a few distinct values), writers' inserts at
# random patients made pages whose patient ranges overlapped, and every probe (each
# insert checks the constraint) read more pages as the table grew: at 1M periods with a
# writer running, the backfill's batches went from 60 to 700 ms. Led by patient_id they
# stay flat.

# The table is new and empty: its index is built in no time, with no writer to block.
PANEL_INDEX = """
-- A table created by this very migration, still empty:
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS ix_care_team_periods_organization_id_provider_id_patient_id
ON care_team_periods (organization_id, provider_id, patient_id)
"""

# A membership changes role at `p_at` (or ends: p_role NULL): its open period closes and
# a new one opens. A patient's periods never run backwards: a change happens no earlier
# than any start or end already recorded for the patient, and after the start of every
# open period it closes. (p_at is its transaction's start: a transaction that began
# before another but took the patient lock after it, changes after it.) A primary that
# begins while another is open (history from before the rule) ends that other one at
# the same instant.
CHANGE_PERIOD = f"""
CREATE OR REPLACE FUNCTION careteam_change_period(
    p_org uuid, p_patient uuid, p_provider uuid, p_role text, p_at timestamptz,
    p_actor text, p_reason text, p_note text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_open bigint;
    v_role text;
    v_at timestamptz;
BEGIN
    SELECT id, role INTO v_open, v_role
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider
      AND upper_inf(valid);
    IF v_open IS NOT NULL AND v_role = p_role THEN
        RETURN;
    END IF;
    SELECT greatest(
        p_at,
        max(lower(valid)),
        max(upper(valid)),
        max(lower(valid)) FILTER (
            WHERE upper_inf(valid)
              AND (provider_id = p_provider OR (p_role = '{PRIMARY}' AND role = '{PRIMARY}'))
        ) + interval '1 microsecond')
    INTO v_at
    FROM care_team_periods
    WHERE organization_id = p_org AND patient_id = p_patient;
    v_at := coalesce(v_at, p_at);
    IF v_open IS NOT NULL THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = p_reason, end_note = p_note
        WHERE organization_id = p_org AND id = v_open;
    END IF;
    IF p_role IS NULL THEN
        RETURN;
    END IF;
    IF p_role = '{PRIMARY}' THEN
        UPDATE care_team_periods
        SET valid = tstzrange(lower(valid), v_at), ended_by = p_actor,
            end_reason = '{CORRECTION}', end_note = 'another primary period began'
        WHERE organization_id = p_org AND patient_id = p_patient AND role = '{PRIMARY}'
          AND upper_inf(valid);
    END IF;
    INSERT INTO care_team_periods
        (organization_id, patient_id, provider_id, role, valid, started_by, start_reason,
         start_note)
    VALUES (p_org, p_patient, p_provider, p_role, tstzrange(v_at, NULL), p_actor, p_reason,
            p_note);
END
$$
"""

# Every change to care_team_assignments changes its periods, in the same transaction, at
# the transaction's instant (now(), as events' occurred_at): all the changes of one
# transaction happen at once, so a new primary's period begins exactly where the
# previous one's ends.
KEEP_PERIODS = f"""
CREATE OR REPLACE FUNCTION careteam_keep_periods() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := coalesce(nullif(current_setting('careteam.actor', true), ''), current_user);
    v_reason text := coalesce(nullif(current_setting('careteam.reason', true), ''), '{OTHER}');
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
            CASE WHEN NEW.is_primary_provider THEN '{PRIMARY}' ELSE '{SECONDARY}' END,
            now(), v_actor, v_reason, v_note);
    END IF;
    RETURN NULL;
END
$$
"""

CREATE_TRIGGER = """
CREATE OR REPLACE TRIGGER careteam_keep_periods
AFTER INSERT OR DELETE OR UPDATE OF is_primary_provider, organization_id, patient_id,
    provider_id ON care_team_assignments
FOR EACH ROW EXECUTE FUNCTION careteam_keep_periods()
"""

# Who and why, for the trigger and the events of this transaction.
BEGIN_CHANGE = """
CREATE OR REPLACE FUNCTION careteam_begin_change(p_actor text, p_reason text, p_note text)
RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('careteam.actor', p_actor, true),
           set_config('careteam.reason', p_reason, true),
           set_config('careteam.note', coalesce(p_note, ''), true)
$$
"""

_EVENT_COLUMNS = """(organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)"""


def _lock_patient(name: str = "p_patient") -> str:
    return f"""
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = {name}
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;"""


# Make p_provider the patient's primary: the one before it stays on the team as a
# secondary; assigning the current primary changes nothing. A provider with a capacity
# takes no more primaries than that (its row is locked: concurrent assignments to it
# queue, so the count cannot be outrun).
ASSIGN_PRIMARY = f"""
CREATE OR REPLACE FUNCTION careteam_assign_primary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS TABLE (changed boolean, previous_primary uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_capacity bigint;
    v_size bigint;
    v_previous uuid;
BEGIN{_lock_patient()}
    SELECT active, panel_capacity INTO v_active, v_capacity
    FROM providers WHERE organization_id = p_org AND id = p_provider
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    IF EXISTS (SELECT 1 FROM care_team_assignments
               WHERE organization_id = p_org AND patient_id = p_patient
                 AND provider_id = p_provider AND is_primary_provider)
       AND NOT EXISTS (SELECT 1 FROM care_team_assignments
                       WHERE organization_id = p_org AND patient_id = p_patient
                         AND provider_id <> p_provider AND is_primary_provider) THEN
        RETURN QUERY SELECT false, p_provider;
        RETURN;
    END IF;
    IF v_capacity IS NOT NULL THEN
        SELECT count(*) INTO v_size FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_provider AND is_primary_provider;
        IF v_size >= v_capacity THEN
            RAISE EXCEPTION USING ERRCODE = 'CT006', MESSAGE = 'panel full',
                DETAIL = format('%s of %s', v_size, v_capacity);
        END IF;
    END IF;
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    WITH demoted AS (
        UPDATE care_team_assignments SET is_primary_provider = false
        WHERE organization_id = p_org AND patient_id = p_patient AND is_primary_provider
          AND provider_id <> p_provider
        RETURNING provider_id
    ), recorded AS (
        INSERT INTO care_team_events {_EVENT_COLUMNS}
        SELECT p_org, p_patient, provider_id, '{EventType.PRIMARY_DEMOTED}', provider_id,
               p_actor, p_reason, p_note, now()
        FROM demoted
        RETURNING provider_id
    )
    SELECT min(provider_id::text)::uuid INTO v_previous FROM recorded;
    WITH promoted AS (
        INSERT INTO care_team_assignments
            (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
        VALUES (p_org, p_patient, p_provider, true, now())
        ON CONFLICT (organization_id, patient_id, provider_id)
        DO UPDATE SET is_primary_provider = true, assigned_at = now()
        WHERE NOT care_team_assignments.is_primary_provider
        RETURNING provider_id
    )
    INSERT INTO care_team_events {_EVENT_COLUMNS}
    SELECT p_org, p_patient, provider_id, '{EventType.PRIMARY_ASSIGNED}', v_previous,
           p_actor, p_reason, p_note, now()
    FROM promoted;
    RETURN QUERY SELECT true, v_previous;
END
$$
"""

# Add p_provider as a secondary; already a secondary: nothing changes (false).
ADD_SECONDARY = f"""
CREATE OR REPLACE FUNCTION careteam_add_secondary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_primary boolean;
BEGIN{_lock_patient()}
    SELECT active INTO v_active FROM providers
    WHERE organization_id = p_org AND id = p_provider
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    SELECT is_primary_provider INTO v_primary FROM care_team_assignments
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider;
    IF v_primary THEN
        RAISE EXCEPTION USING ERRCODE = 'CT004', MESSAGE = 'provider already primary';
    END IF;
    IF v_primary IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    INSERT INTO care_team_assignments
        (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
    VALUES (p_org, p_patient, p_provider, false, now());
    INSERT INTO care_team_events {_EVENT_COLUMNS}
    VALUES (p_org, p_patient, p_provider, '{EventType.SECONDARY_ADDED}', NULL, p_actor,
            p_reason, p_note, now());
    RETURN true;
END
$$
"""

# Take p_provider off the team; returns whether it was the primary.
REMOVE_MEMBER = f"""
CREATE OR REPLACE FUNCTION careteam_remove_member(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_was_primary boolean;
BEGIN{_lock_patient()}
    PERFORM careteam_begin_change(p_actor, p_reason, p_note);
    DELETE FROM care_team_assignments
    WHERE organization_id = p_org AND patient_id = p_patient AND provider_id = p_provider
    RETURNING is_primary_provider INTO v_was_primary;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT005', MESSAGE = 'provider not on the care team';
    END IF;
    INSERT INTO care_team_events {_EVENT_COLUMNS}
    VALUES (p_org, p_patient, p_provider, '{EventType.PROVIDER_REMOVED}',
            CASE WHEN v_was_primary THEN p_provider END, p_actor, p_reason, p_note,
            now());
    RETURN v_was_primary;
END
$$
"""

# One batch of a panel transfer, one transaction: up to p_limit of p_from's primary
# patients (in patient order, locked before the target provider, as every writer locks)
# get p_to as their primary, as many as p_to's capacity allows; p_from stays on their
# teams as a secondary (p_keep) or leaves them. Re-running moves only what is left.
TRANSFER_BATCH = f"""
CREATE OR REPLACE FUNCTION careteam_transfer_batch(
    p_org uuid, p_from uuid, p_to uuid, p_actor text, p_reason text, p_note text,
    p_keep boolean, p_limit integer)
RETURNS TABLE (moved integer, refused_capacity integer, remaining bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch uuid[];
    v_move uuid[];
    v_active boolean;
    v_capacity bigint;
    v_room bigint;
BEGIN
    v_batch := ARRAY(
        SELECT patient_id FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider
        ORDER BY patient_id LIMIT p_limit);
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = ANY (v_batch)
    ORDER BY id FOR NO KEY UPDATE;
    -- Under the locks: only the patients whose primary is still p_from.
    v_batch := ARRAY(
        SELECT patient_id FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider
          AND patient_id = ANY (v_batch)
        ORDER BY patient_id);
    SELECT active, panel_capacity INTO v_active, v_capacity
    FROM providers WHERE organization_id = p_org AND id = p_to
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT002', MESSAGE = 'provider not found';
    END IF;
    IF NOT v_active THEN
        RAISE EXCEPTION USING ERRCODE = 'CT003', MESSAGE = 'provider inactive';
    END IF;
    v_room := cardinality(v_batch);
    IF v_capacity IS NOT NULL THEN
        SELECT greatest(0, v_capacity - count(*)) INTO v_room FROM care_team_assignments
        WHERE organization_id = p_org AND provider_id = p_to AND is_primary_provider;
    END IF;
    v_move := v_batch[1:least(v_room, cardinality(v_batch))];
    IF cardinality(v_move) > 0 THEN
        PERFORM careteam_begin_change(p_actor, p_reason, p_note);
        IF p_keep THEN
            WITH demoted AS (
                UPDATE care_team_assignments SET is_primary_provider = false
                WHERE organization_id = p_org AND provider_id = p_from
                  AND patient_id = ANY (v_move)
                RETURNING patient_id
            )
            INSERT INTO care_team_events {_EVENT_COLUMNS}
            SELECT p_org, patient_id, p_from, '{EventType.PRIMARY_DEMOTED}', p_from,
                   p_actor, p_reason, p_note, now()
            FROM demoted;
        ELSE
            WITH removed AS (
                DELETE FROM care_team_assignments
                WHERE organization_id = p_org AND provider_id = p_from
                  AND patient_id = ANY (v_move)
                RETURNING patient_id
            )
            INSERT INTO care_team_events {_EVENT_COLUMNS}
            SELECT p_org, patient_id, p_from, '{EventType.PROVIDER_REMOVED}', p_from,
                   p_actor, p_reason, p_note, now()
            FROM removed;
        END IF;
        WITH promoted AS (
            INSERT INTO care_team_assignments
                (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
            SELECT p_org, patient_id, p_to, true, now()
            FROM unnest(v_move) AS patient_id
            ON CONFLICT (organization_id, patient_id, provider_id)
            DO UPDATE SET is_primary_provider = true, assigned_at = now()
            RETURNING patient_id
        )
        INSERT INTO care_team_events {_EVENT_COLUMNS}
        SELECT p_org, patient_id, p_to, '{EventType.PRIMARY_ASSIGNED}', p_from,
               p_actor, p_reason, p_note, now()
        FROM promoted;
    END IF;
    RETURN QUERY SELECT cardinality(v_move), cardinality(v_batch) - cardinality(v_move),
        (SELECT count(*) FROM care_team_assignments
         WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider);
END
$$
"""

WRITE_FUNCTIONS = {
    "careteam_assign_primary(uuid, uuid, uuid, text, text, text)": ASSIGN_PRIMARY,
    "careteam_add_secondary(uuid, uuid, uuid, text, text, text)": ADD_SECONDARY,
    "careteam_remove_member(uuid, uuid, uuid, text, text, text)": REMOVE_MEMBER,
    "careteam_transfer_batch(uuid, uuid, uuid, text, text, text, boolean, integer)": (
        TRANSFER_BATCH
    ),
}
HELPERS = {
    "careteam_begin_change(text, text, text)": BEGIN_CHANGE,
    "careteam_change_period(uuid, uuid, uuid, text, timestamptz, text, text, text)": (
        CHANGE_PERIOD
    ),
}

# One batch of the backfill, one transaction: the next p_batch patients after
# (p_after_org, p_after_patient), locked as the service locks them; each one's periods
# rebuilt from its events (in the order they were written), then from its current
# assignments for what the events do not explain. Returns the last patient done.
BACKFILL_BATCH = f"""
CREATE OR REPLACE FUNCTION pg_temp.careteam_backfill_periods(
    p_after_org uuid, p_after_patient uuid, p_batch integer, p_actor text)
RETURNS TABLE (last_org uuid, last_patient uuid, patients integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_patients record;
    v_event record;
    v_assignment record;
    v_reason text;
    v_role text;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS careteam_backfill_batch
        (organization_id uuid, patient_id uuid) ON COMMIT DELETE ROWS;
    INSERT INTO careteam_backfill_batch
    SELECT organization_id, id FROM patients
    WHERE (organization_id, id) > (p_after_org, p_after_patient)
    ORDER BY organization_id, id
    LIMIT p_batch
    FOR NO KEY UPDATE;
    -- The statements that read care_team_periods are EXECUTEd: planned for each batch
    -- on the table as it is now (a plan cached at the first batch, on an empty table,
    -- would scan the whole table in every later one).
    EXECUTE 'DELETE FROM care_team_periods AS pe USING careteam_backfill_batch AS b
             WHERE pe.organization_id = b.organization_id AND pe.patient_id = b.patient_id';
    -- Patients without history (most, on data from before events were kept): one
    -- period per assignment, from its time, in one statement.
    INSERT INTO care_team_periods
        (organization_id, patient_id, provider_id, role, valid, started_by, start_reason,
         start_note)
    SELECT a.organization_id, a.patient_id, a.provider_id,
           CASE WHEN a.is_primary_provider THEN '{PRIMARY}' ELSE '{SECONDARY}' END,
           tstzrange(a.assigned_at, NULL), p_actor, '{CORRECTION}',
           'opened from the assignment: no event explains it'
    FROM care_team_assignments AS a
    JOIN careteam_backfill_batch AS b
        ON b.organization_id = a.organization_id AND b.patient_id = a.patient_id
    WHERE NOT EXISTS (
        SELECT 1 FROM care_team_events AS e
        WHERE e.organization_id = a.organization_id AND e.patient_id = a.patient_id);
    -- Patients with history: replay it, change by change.
    FOR v_event IN
        SELECT e.organization_id, e.patient_id, e.provider_id, e.event_type, e.actor,
               e.reason, e.note, e.occurred_at
        FROM care_team_events AS e
        JOIN careteam_backfill_batch AS b
            ON b.organization_id = e.organization_id AND b.patient_id = e.patient_id
        ORDER BY e.organization_id, e.patient_id, e.seq
    LOOP
        v_role := CASE v_event.event_type
            WHEN '{EventType.PRIMARY_ASSIGNED}' THEN '{PRIMARY}'
            WHEN '{EventType.SECONDARY_ADDED}' THEN '{SECONDARY}'
            WHEN '{EventType.PRIMARY_DEMOTED}' THEN '{SECONDARY}'
            WHEN '{EventType.MIGRATION_DEDUPE}' THEN '{SECONDARY}'
            ELSE NULL END;
        -- Reasons from before the vocabulary (free text) become `other`, kept as a note.
        v_reason := CASE WHEN {one_of("v_event.reason", ChangeReason)}
                         THEN v_event.reason ELSE '{OTHER}' END;
        PERFORM careteam_change_period(
            v_event.organization_id, v_event.patient_id, v_event.provider_id, v_role,
            v_event.occurred_at, v_event.actor, v_reason,
            CASE WHEN v_reason = v_event.reason THEN v_event.note
                 ELSE left(v_event.reason, {NOTE_MAX_LENGTH}) END);
    END LOOP;
    -- Then the present: every assignment has its open period, in its role.
    FOR v_assignment IN EXECUTE
        'SELECT a.organization_id, a.patient_id, a.provider_id, a.is_primary_provider,
                a.assigned_at
         FROM care_team_assignments AS a
         JOIN careteam_backfill_batch AS b
             ON b.organization_id = a.organization_id AND b.patient_id = a.patient_id
         WHERE NOT EXISTS (
             SELECT 1 FROM care_team_periods AS pe
             WHERE pe.organization_id = a.organization_id AND pe.patient_id = a.patient_id
               AND pe.provider_id = a.provider_id AND upper_inf(pe.valid)
               AND (pe.role = ''{PRIMARY}'') = a.is_primary_provider)
         ORDER BY a.organization_id, a.patient_id, a.is_primary_provider, a.assigned_at'
    LOOP
        PERFORM careteam_change_period(
            v_assignment.organization_id, v_assignment.patient_id, v_assignment.provider_id,
            CASE WHEN v_assignment.is_primary_provider THEN '{PRIMARY}' ELSE '{SECONDARY}' END,
            v_assignment.assigned_at, p_actor, '{CORRECTION}',
            'opened from the assignment: no event explains it');
    END LOOP;
    -- And no open period without an assignment.
    FOR v_assignment IN EXECUTE
        'SELECT pe.organization_id, pe.patient_id, pe.provider_id
         FROM care_team_periods AS pe
         JOIN careteam_backfill_batch AS b
             ON b.organization_id = pe.organization_id AND b.patient_id = pe.patient_id
         WHERE upper_inf(pe.valid) AND NOT EXISTS (
             SELECT 1 FROM care_team_assignments AS a
             WHERE a.organization_id = pe.organization_id AND a.patient_id = pe.patient_id
               AND a.provider_id = pe.provider_id)'
    LOOP
        PERFORM careteam_change_period(
            v_assignment.organization_id, v_assignment.patient_id, v_assignment.provider_id,
            NULL, now(), p_actor, '{CORRECTION}',
            'closed: the provider is not on the team');
    END LOOP;
    RETURN QUERY
        SELECT b.organization_id, b.patient_id,
               (SELECT count(*)::integer FROM careteam_backfill_batch)
        FROM careteam_backfill_batch AS b
        ORDER BY b.organization_id DESC, b.patient_id DESC
        LIMIT 1;
END
$$
"""


def upgrade() -> None:
    role = get_settings().app_db_role
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.execute(CREATE_PERIODS)
    op.execute(PANEL_INDEX)
    op.execute("ALTER TABLE care_team_periods ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE care_team_periods FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON care_team_periods")
    op.execute(
        "CREATE POLICY tenant_isolation ON care_team_periods "
        f"USING (organization_id = {CURRENT_TENANT}) "
        f"WITH CHECK (organization_id = {CURRENT_TENANT})"
    )
    # Written only by the trigger, in the application's own transactions: never deleted.
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON care_team_periods TO {role}")
    for sql in (*HELPERS.values(), *WRITE_FUNCTIONS.values(), KEEP_PERIODS):
        op.execute(sql)
    for signature in (*HELPERS, *WRITE_FUNCTIONS):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")

    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        # The tables writers use, each changed by a statement of its own (its own
        # transaction): one that held two at once could deadlock with a writer that
        # takes them in the other order (assignments, then events).
        op.execute("ALTER TABLE providers ADD COLUMN IF NOT EXISTS panel_capacity bigint")
        op.execute("ALTER TABLE care_team_events ADD COLUMN IF NOT EXISTS note text")
        op.execute(CREATE_TRIGGER)
        _constrain(
            "providers",
            "ck_providers_panel_capacity",
            "panel_capacity IS NULL OR panel_capacity >= 0",
        )
        _constrain(
            "care_team_events",
            "ck_care_team_events_note",
            f"note IS NULL OR length(note) <= {NOTE_MAX_LENGTH}",
        )
        # Events written from now on: reasons from the vocabulary (earlier ones were
        # free text, kept as they are: the constraint is not validated against them).
        op.execute(
            "-- A leftover of an interrupted run, added again below:\n"
            "-- squawk-ignore ban-drop-constraint\n"
            "ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_reason"
        )
        op.execute(
            "ALTER TABLE care_team_events ADD CONSTRAINT ck_care_team_events_reason "
            f"CHECK (reason IS NULL OR {one_of('reason', ChangeReason)}) NOT VALID"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            "ix_care_team_assignments_organization_id_provider_id_primary "
            "ON care_team_assignments (organization_id, provider_id) "
            "WHERE is_primary_provider"
        )
        _backfill(actor=f"migration:{revision}")
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def _constrain(table: str, name: str, condition: str) -> None:
    """A CHECK constraint added without a long lock: NOT VALID, then validated."""
    op.execute(
        "-- A leftover of an interrupted run, added again below:\n"
        "-- squawk-ignore ban-drop-constraint\n"
        f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
    )
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def _backfill(*, actor: str) -> None:
    op.execute(BACKFILL_BATCH)
    first = "'00000000-0000-0000-0000-000000000000'"
    call = (
        "SELECT * FROM pg_temp.careteam_backfill_periods("
        "CAST(:org AS uuid), CAST(:patient AS uuid), :batch, :actor)"
    )
    if context.is_offline_mode():  # the statement once, for review and squawk
        op.execute(
            "SELECT * FROM pg_temp.careteam_backfill_periods("
            f"{first}, {first}, {BATCH_SIZE}, '{actor}')"
        )
        return
    connection = op.get_bind()
    total = int(connection.execute(text("SELECT count(*) FROM patients")).scalar_one())
    logger.info("periods: building them for %d patient(s), %d at a time", total, BATCH_SIZE)
    started = reported = time.monotonic()
    done = 0
    after = ("00000000-0000-0000-0000-000000000000",) * 2
    for batch in itertools.count(1):
        row = connection.execute(
            text(call),
            {"org": after[0], "patient": after[1], "batch": BATCH_SIZE, "actor": actor},
        ).one_or_none()
        if row is None:
            logger.info("periods: done, %d patient(s) in %.1f s", done, time.monotonic() - started)
            return
        done += row.patients
        after = (str(row.last_org), str(row.last_patient))
        if time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            logger.info(
                "periods: %d of %d patient(s) (%d%%), %.0f s",
                done,
                total,
                100 * done // max(total, 1),
                reported - started,
            )
        if batch & (batch - 1) == 0:
            # Each time the new table has doubled: statistics for its plans (and the
            # plans cached for the per-change function are made again, with them).
            op.execute("ANALYZE care_team_periods")


def downgrade() -> None:
    role = get_settings().app_db_role
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute(
            "DROP INDEX CONCURRENTLY IF EXISTS "
            "ix_care_team_assignments_organization_id_provider_id_primary"
        )
        op.execute("RESET lock_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute("DROP TRIGGER IF EXISTS careteam_keep_periods ON care_team_assignments")
    op.execute("DROP FUNCTION IF EXISTS careteam_keep_periods()")
    for signature in (*WRITE_FUNCTIONS, *HELPERS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    # The notes and capacities written meanwhile stay (columns the earlier release does
    # not read): a rollback loses nothing. Their checks go: the earlier release writes
    # free-text reasons.
    op.execute("ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_reason")
    op.execute("ALTER TABLE care_team_events DROP CONSTRAINT IF EXISTS ck_care_team_events_note")
    op.execute("ALTER TABLE providers DROP CONSTRAINT IF EXISTS ck_providers_panel_capacity")
    op.execute(f"REVOKE ALL ON care_team_periods FROM {role}")
    op.execute("DROP TABLE IF EXISTS care_team_periods")
