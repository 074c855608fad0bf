"""Care team writes, and the read as of an instant, in one statement each; events last.

Inserting an event takes the organization's event counter (care_team_event_sequences,
a row lock held until COMMIT, so that event numbers follow commit order with no gaps).
Every writer of the organization queues on that row: what a write does between its
first event and the end of its transaction, no other writer of the organization can do
at the same time. A primary assignment held it through the promotion (the new
primary's period change, by the trigger), then two round trips to the application (the
team read, then COMMIT), whose time grows with the application's load.

1. careteam_assign_primary and careteam_transfer_batch record their events after their
   changes, not between them: same events, same order, same numbers.
2. careteam_write(p_op, ...) runs one write (`assign_primary`, `add_secondary`,
   `remove_member`, through the functions above) and returns the team after it, as
   careteam_care_team reads it. It sets the tenant and checks the request's API key
   itself (careteam_enter), and checks the team's version when the caller names one
   (If-Match: the patient locked first, then the version read; CT008 if it moved on).
   So a write is one statement, sent alone, in an implicit transaction: it commits
   where the statement ends, with no round trip to the application under the counter.
   (A write with an Idempotency-Key still runs in an explicit transaction: the key is
   claimed before it and the response stored after it.)
3. `care_team_events.write_id`: the id the service gives each write (careteam_write
   sets `careteam.write_id` for its transaction, and the column's default takes it), so
   that after a connection lost during a write, whether that very write committed is a
   fact to look up, not a guess from the team's state: a write sent alone may be lost
   before PostgreSQL ran it, when the team may already look as it would after it (the
   provider to remove was never on the team). careteam_write itself looks for its id
   under the patient's lock, and does nothing more if it is there: an attempt lost to
   the application that runs late, after the attempt that replaced it, is not applied
   twice. NULL for events written otherwise; indexed where set (built concurrently).
4. careteam_care_team_as_of(org, patient, instant, key hash): the team as it stood at an
   instant, one statement like careteam_care_team (it was BEGIN with the tenant, the
   query and COMMIT: three round trips for a read).

Figures: docs/PERFORMANCE.md. The earlier functions stay, unchanged in what they return:
the release before calls them during a rolling deploy.

Online: one short transaction, then a concurrent index build. The new column (nullable,
then its default: neither rewrites the table) takes the events' table lock, with a 5 s
lock timeout (if a long transaction holds the table, the migration stops having changed
nothing, and can be run again), until the functions are replaced, a matter of
milliseconds; CREATE OR REPLACE FUNCTION takes no lock a writer waits on. The index on
write ids is built CONCURRENTLY (it holds no row yet, but the build reads the table
once). downgrade() drops the index, careteam_write, careteam_care_team_as_of and the
column, and puts back 20261128_care_team_periods's definitions.

Revision ID: 20261206_writes_in_one_statement
Revises: 20261206_period_changes_by_index
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings
from src.migration_runner import drop_invalid_index, revision_module
from src.models.care_team import EventType, PeriodRole

revision: str = "20261206_writes_in_one_statement"
down_revision: str | None = "20261206_period_changes_by_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERIODS = "20261128_care_team_periods"
PRIMARY = PeriodRole.PRIMARY.value
_EVENT_COLUMNS = """(organization_id, patient_id, provider_id, event_type,
             previous_primary_provider_id, actor, reason, note, occurred_at)"""
_LOCK_PATIENT = """
    PERFORM 1 FROM patients WHERE organization_id = p_org AND id = p_patient
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CT001', MESSAGE = 'patient not found';
    END IF;"""

# Make p_provider the patient's primary: the one before it stays on the team as a
# secondary; assigning the current primary changes nothing. A provider with a capacity
# takes no more primaries than that (its row is locked: concurrent assignments to it
# queue, so the count cannot be outrun). The events come last (1. above).
ASSIGN_PRIMARY = f"""
CREATE OR REPLACE FUNCTION careteam_assign_primary(
    p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text, p_note text)
RETURNS TABLE (changed boolean, previous_primary uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_active boolean;
    v_capacity bigint;
    v_size bigint;
    v_demoted uuid[];
    v_previous uuid;
    v_promoted integer;
BEGIN{_LOCK_PATIENT}
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
    )
    SELECT array_agg(provider_id ORDER BY provider_id::text), min(provider_id::text)::uuid
    INTO v_demoted, v_previous
    FROM demoted;
    INSERT INTO care_team_assignments
        (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
    VALUES (p_org, p_patient, p_provider, true, now())
    ON CONFLICT (organization_id, patient_id, provider_id)
    DO UPDATE SET is_primary_provider = true, assigned_at = now()
    WHERE NOT care_team_assignments.is_primary_provider;
    GET DIAGNOSTICS v_promoted = ROW_COUNT;
    INSERT INTO care_team_events {_EVENT_COLUMNS}
    SELECT p_org, p_patient, demoted, '{EventType.PRIMARY_DEMOTED}', demoted, p_actor,
           p_reason, p_note, now()
    FROM unnest(v_demoted) WITH ORDINALITY AS d (demoted, n)
    ORDER BY n;
    IF v_promoted > 0 THEN
        INSERT INTO care_team_events {_EVENT_COLUMNS}
        VALUES (p_org, p_patient, p_provider, '{EventType.PRIMARY_ASSIGNED}', v_previous,
                p_actor, p_reason, p_note, now());
    END IF;
    RETURN QUERY SELECT true, v_previous;
END
$$
"""

# One batch of a panel transfer, one transaction: up to p_limit of p_from's primary
# patients (in patient order, locked before the target provider, as every writer locks)
# get p_to as their primary, as many as p_to's capacity allows; p_from stays on their
# teams as a secondary (p_keep) or leaves them. Re-running moves only what is left. The
# events come last (1. above), in patient order: a batch's period changes no longer run under the
# counter, which every other writer of the organization waits on.
TRANSFER_BATCH = f"""
CREATE OR REPLACE FUNCTION careteam_transfer_batch(
    p_org uuid, p_from uuid, p_to uuid, p_actor text, p_reason text, p_note text,
    p_keep boolean, p_limit integer)
RETURNS TABLE (moved integer, refused_capacity integer, remaining bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch uuid[];
    v_move uuid[];
    v_left uuid[];
    v_promoted uuid[];
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
            SELECT array_agg(patient_id ORDER BY patient_id) INTO v_left FROM demoted;
        ELSE
            WITH removed AS (
                DELETE FROM care_team_assignments
                WHERE organization_id = p_org AND provider_id = p_from
                  AND patient_id = ANY (v_move)
                RETURNING patient_id
            )
            SELECT array_agg(patient_id ORDER BY patient_id) INTO v_left FROM removed;
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
        SELECT array_agg(patient_id ORDER BY patient_id) INTO v_promoted FROM promoted;
        INSERT INTO care_team_events {_EVENT_COLUMNS}
        SELECT p_org, patient_id, p_from,
               CASE WHEN p_keep THEN '{EventType.PRIMARY_DEMOTED}'
                    ELSE '{EventType.PROVIDER_REMOVED}' END,
               p_from, p_actor, p_reason, p_note, now()
        FROM unnest(v_left) WITH ORDINALITY AS l (patient_id, n)
        ORDER BY n;
        INSERT INTO care_team_events {_EVENT_COLUMNS}
        SELECT p_org, patient_id, p_to, '{EventType.PRIMARY_ASSIGNED}', p_from,
               p_actor, p_reason, p_note, now()
        FROM unnest(v_promoted) WITH ORDINALITY AS m (patient_id, n)
        ORDER BY n;
    END IF;
    RETURN QUERY SELECT cardinality(v_move), cardinality(v_batch) - cardinality(v_move),
        (SELECT count(*) FROM care_team_assignments
         WHERE organization_id = p_org AND provider_id = p_from AND is_primary_provider);
END
$$
"""


WRITE = "careteam_write(text, uuid, uuid, uuid, text, text, text, bigint[], text, uuid)"
WRITE_ID = "nullif(current_setting('careteam.write_id', true), '')::uuid"
WRITE_ID_INDEX = "ix_care_team_events_organization_id_write_id"

# 2. above. p_if_version: the team's version as the caller read it ({last event number,
# members' record versions}), or NULL. p_write_id: the write's id, on its events (3.).
# The team comes back as careteam_care_team reads it, each row with the write's outcome:
# `changed`, and `previous_primary` (assign: the primary before it; remove: the
# provider, if it was the primary). Each statement of a PL/pgSQL function sees what the
# ones before it wrote, so the team read sees the write.
CREATE_WRITE = f"""
CREATE OR REPLACE FUNCTION public.careteam_write(
    p_op text, p_org uuid, p_patient uuid, p_provider uuid, p_actor text, p_reason text,
    p_note text, p_if_version bigint[], p_key_hash text, p_write_id uuid)
RETURNS TABLE (
    changed boolean, previous_primary uuid, patient_id uuid, provider_id uuid,
    is_primary_provider boolean, assigned_at timestamptz, since timestamptz,
    first_name text, last_name text, active boolean, provider_version bigint,
    version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_changed boolean := true;
    v_previous uuid;
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    PERFORM pg_catalog.set_config('careteam.write_id', p_write_id::text, true);
    -- The patient's lock, as the write function takes it (again: then at no cost).{_LOCK_PATIENT}
    -- Unless this very write is done already (an attempt the application lost ran after
    -- all: before this one, or this is that attempt, running after the one that
    -- replaced it): then it changes nothing more, and the team is its answer.
    IF p_write_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM public.care_team_events AS e
        WHERE e.organization_id = p_org AND e.write_id = p_write_id
          AND e.patient_id = p_patient) THEN
        IF p_if_version IS NOT NULL THEN
            IF ARRAY[
                (SELECT coalesce(max(e.seq), 0) FROM public.care_team_events AS e
                 WHERE e.organization_id = p_org AND e.patient_id = p_patient),
                (SELECT coalesce(sum(v.version), 0)::bigint
                 FROM public.care_team_assignments AS a
                 JOIN public.providers AS v
                     ON v.organization_id = a.organization_id AND v.id = a.provider_id
                 WHERE a.organization_id = p_org AND a.patient_id = p_patient)
            ] IS DISTINCT FROM p_if_version THEN
                RAISE EXCEPTION USING ERRCODE = 'CT008',
                    MESSAGE = 'the care team is not at the version named';
            END IF;
        END IF;
        CASE p_op
        WHEN 'assign_primary' THEN
            SELECT w.changed, w.previous_primary INTO v_changed, v_previous
            FROM public.careteam_assign_primary(
                p_org, p_patient, p_provider, p_actor, p_reason, p_note) AS w;
        WHEN 'add_secondary' THEN
            v_changed := public.careteam_add_secondary(
                p_org, p_patient, p_provider, p_actor, p_reason, p_note);
        WHEN 'remove_member' THEN
            IF public.careteam_remove_member(
                    p_org, p_patient, p_provider, p_actor, p_reason, p_note) THEN
                v_previous := p_provider;
            END IF;
        ELSE
            RAISE EXCEPTION 'careteam_write: unknown operation %', p_op;
        END CASE;
    END IF;
    RETURN QUERY
    SELECT v_changed, v_previous, t.*
    FROM public.careteam_care_team(p_org, p_patient, NULL) AS t;
END
$$
"""

CARE_TEAM_AS_OF = "careteam_care_team_as_of(uuid, uuid, timestamptz, text)"

# 4. above: the periods that held at p_as_of (assigned_at and since: the period's start).
# The patient row comes back with no period, so "no such patient" and "no members then"
# are told apart.
CREATE_CARE_TEAM_AS_OF = f"""
CREATE OR REPLACE FUNCTION public.careteam_care_team_as_of(
    p_org uuid, p_patient uuid, p_as_of timestamptz, p_key_hash text)
RETURNS TABLE (
    patient_id uuid, provider_id uuid, is_primary_provider boolean,
    assigned_at timestamptz, since timestamptz, first_name text, last_name text,
    active boolean, provider_version bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    RETURN QUERY
    SELECT p.id, pe.provider_id, pe.role = '{PRIMARY}', lower(pe.valid), lower(pe.valid),
           v.first_name, v.last_name, v.active, v.version, NULL::bigint
    FROM public.patients AS p
    LEFT JOIN public.care_team_periods AS pe
        ON pe.organization_id = p.organization_id AND pe.patient_id = p.id
       AND pe.valid @> p_as_of
    LEFT JOIN public.providers AS v
        ON v.organization_id = pe.organization_id AND v.id = pe.provider_id
    WHERE p.organization_id = p_org AND p.id = p_patient
    ORDER BY pe.role = '{PRIMARY}' DESC, lower(pe.valid), pe.provider_id;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # The one table this transaction locks: first, for the moment the rest takes.
    op.execute("ALTER TABLE care_team_events ADD COLUMN IF NOT EXISTS write_id uuid")
    op.execute(f"ALTER TABLE care_team_events ALTER COLUMN write_id SET DEFAULT {WRITE_ID}")
    op.execute(ASSIGN_PRIMARY)
    op.execute(TRANSFER_BATCH)
    op.execute(CREATE_WRITE)
    op.execute(CREATE_CARE_TEAM_AS_OF)
    for signature in (WRITE, CARE_TEAM_AS_OF):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {get_settings().app_db_role}")
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute("SET statement_timeout = 0")
        drop_invalid_index(WRITE_ID_INDEX)
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {WRITE_ID_INDEX} "
            "ON care_team_events (organization_id, write_id) WHERE write_id IS NOT NULL"
        )
        op.execute("RESET lock_timeout")
        op.execute("RESET statement_timeout")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {WRITE_ID_INDEX}")
        op.execute("RESET lock_timeout")
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(f"DROP FUNCTION IF EXISTS {CARE_TEAM_AS_OF}")
    op.execute(f"DROP FUNCTION IF EXISTS {WRITE}")
    periods = revision_module(PERIODS)
    op.execute(periods.ASSIGN_PRIMARY)
    op.execute(periods.TRANSFER_BATCH)
    op.execute("ALTER TABLE care_team_events DROP COLUMN IF EXISTS write_id")
