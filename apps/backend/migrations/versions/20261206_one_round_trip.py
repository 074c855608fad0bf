"""Requests in fewer round trips: the key check travels with the tenant, and the care
team is read by one statement.

- careteam_enter(org, key_hash): the first statement of every transaction the service
  runs. It sets the tenant (transaction-locally, as set_config(..., true) did) and, when
  the request came with an API key, checks in the same statement that the key is still
  live and belongs to that organization (SQLSTATE CT007 otherwise: the class of the
  write functions' own errors; 28000 would be taken for PostgreSQL's refusal of a
  login). The API keeps the
  key's organization in memory after its first use; this check is what makes a revoked
  key fail on its very next request anyway, with no round trip of its own.
- careteam_care_team(org, patient, key_hash): careteam_enter, then the current care
  team (the statement that was SELECT_TEAM in the service). A read of the team is this
  one statement in an implicit transaction: one round trip instead of four (key, BEGIN
  with the tenant, the query, COMMIT). Writes call it for the team they return.

Both are SECURITY INVOKER, so row-level security applies to their queries as the
application role, and neither has a SET clause: a function's SET clause would undo the
tenant it sets when it returns. Names are schema-qualified instead.

Online: CREATE FUNCTION takes no lock on a table. downgrade() drops both; the
release before this one does not call them.

Revision ID: 20261206_one_round_trip
Revises: 20261206_records_and_sync
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from src.config import get_settings

revision: str = "20261206_one_round_trip"
down_revision: str | None = "20261206_records_and_sync"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENTER = "public.careteam_enter(uuid, text)"
CARE_TEAM = "public.careteam_care_team(uuid, uuid, text)"

CREATE_ENTER = """
CREATE OR REPLACE FUNCTION public.careteam_enter(p_org uuid, p_key_hash text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_key_hash IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM public.authenticate_api_key(p_key_hash) AS k
        WHERE k.organization_id = p_org
    ) THEN
        RAISE EXCEPTION 'the API key is not live for this organization'
            USING ERRCODE = 'CT007';
    END IF;
    PERFORM pg_catalog.set_config('app.current_organization_id', p_org::text, true);
END
$$
"""

# The patient row comes back even with an empty team, so "no such patient" and "no
# members" are told apart in one round trip; `since` is the start of the member's open
# period, from the patient's open periods read once through the GiST index (`valid @>
# 'infinity'`: upper_inf() is not indexable, and a join on it read the patient's whole
# history once per member); `version` is the number of the patient's last event.
CREATE_CARE_TEAM = """
CREATE OR REPLACE FUNCTION public.careteam_care_team(
    p_org uuid, p_patient uuid, p_key_hash text)
RETURNS TABLE (
    patient_id uuid, provider_id uuid, is_primary_provider boolean,
    assigned_at timestamptz, since timestamptz, first_name text, last_name text,
    active boolean, provider_version bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM public.careteam_enter(p_org, p_key_hash);
    RETURN QUERY
    SELECT p.id, a.provider_id, a.is_primary_provider, a.assigned_at,
           pe.since, v.first_name, v.last_name, v.active, v.version, e.version
    FROM public.patients AS p
    CROSS JOIN LATERAL (
        SELECT coalesce(max(seq), 0) AS version FROM public.care_team_events
        WHERE organization_id = p.organization_id AND patient_id = p.id) AS e
    LEFT JOIN public.care_team_assignments AS a
        ON a.organization_id = p.organization_id AND a.patient_id = p.id
    LEFT JOIN (
        SELECT o.provider_id, lower(o.valid) AS since
        FROM public.care_team_periods AS o
        WHERE o.organization_id = p_org AND o.patient_id = p_patient
          AND o.valid @> 'infinity'::timestamptz) AS pe
        ON pe.provider_id = a.provider_id
    LEFT JOIN public.providers AS v
        ON v.organization_id = a.organization_id AND v.id = a.provider_id
    WHERE p.organization_id = p_org AND p.id = p_patient
    ORDER BY a.is_primary_provider DESC, a.assigned_at, a.provider_id;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    role = get_settings().app_db_role
    op.execute(CREATE_ENTER)
    op.execute(CREATE_CARE_TEAM)
    for signature in (ENTER, CARE_TEAM):
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.execute(f"DROP FUNCTION IF EXISTS {CARE_TEAM}")
    op.execute(f"DROP FUNCTION IF EXISTS {ENTER}")
