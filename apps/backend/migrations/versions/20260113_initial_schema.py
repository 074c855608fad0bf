"""Initial schema: organizations, patients, providers, care teams, events, API keys.

Every child table carries organization_id, and references its patient and provider by
(organization_id, id), so a row can never point at another organization's patient or
provider. Every unique constraint and foreign key includes organization_id; the primary
keys on id alone are what distributing by tenant would change (docs/SCALING.md).

Revision ID: 20260113_initial_schema
Revises:
Create Date: 2026-01-13
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "20260113_initial_schema"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GEN_UUID = sa.text("gen_random_uuid()")
# The event types as this revision created them: frozen here, so that a later change to
# the application's enum never changes what this revision does.
EVENT_TYPE_CHECK = (
    "event_type IN ('primary_assigned', 'primary_demoted', 'secondary_added', "
    "'provider_removed', 'migration_dedupe')"
)


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    # Never queue for long behind (and so in front of) the site's own queries.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.create_table(
        "organizations",
        sa.Column("id", UUID(as_uuid=True), server_default=GEN_UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_organizations"),
    )
    for table in ("patients", "providers"):
        extra = (
            [sa.Column("dob", sa.Date(), nullable=True)]
            if table == "patients"
            else [
                sa.Column("npi", sa.Text(), nullable=True),
                sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
            ]
        )
        op.create_table(
            table,
            sa.Column("id", UUID(as_uuid=True), server_default=GEN_UUID, nullable=False),
            sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
            sa.Column("first_name", sa.Text(), nullable=True),
            sa.Column("last_name", sa.Text(), nullable=True),
            *extra,
            _created_at(),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("organization_id", "id", name=f"uq_{table}_organization_id_id"),
            sa.ForeignKeyConstraint(
                ["organization_id"],
                ["organizations.id"],
                name=f"fk_{table}_organization_id_organizations",
                ondelete="RESTRICT",
            ),
        )

    op.create_table(
        "care_team_assignments",
        sa.Column("id", UUID(as_uuid=True), server_default=GEN_UUID, nullable=False),
        sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
        sa.Column("patient_id", UUID(as_uuid=True), nullable=False),
        sa.Column("provider_id", UUID(as_uuid=True), nullable=False),
        sa.Column(
            "is_primary_provider", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column(
            "assigned_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_care_team_assignments"),
        *_tenant_foreign_keys("care_team_assignments"),
        sa.UniqueConstraint(
            "organization_id",
            "patient_id",
            "provider_id",
            name="uq_care_team_assignments_organization_id_patient_id_provider_id",
        ),
    )

    op.create_table(
        "care_team_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
        sa.Column("patient_id", UUID(as_uuid=True), nullable=False),
        sa.Column("provider_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("previous_primary_provider_id", UUID(as_uuid=True), nullable=True),
        sa.Column("actor", sa.Text(), server_default=sa.text("'system'"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "occurred_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_care_team_events"),
        *_tenant_foreign_keys("care_team_events"),
        sa.CheckConstraint(EVENT_TYPE_CHECK, name="ck_care_team_events_event_type"),
    )
    op.create_index(
        "ix_care_team_events_organization_id_patient_id_id",
        "care_team_events",
        ["organization_id", "patient_id", "id"],
    )

    # Bearer API keys: each belongs to one organization and decides a request's tenant.
    # Only a SHA-256 hash is stored (the keys are 256-bit random tokens, so a slow
    # password hash adds nothing); revoking sets revoked_at.
    op.create_table(
        "api_keys",
        sa.Column("id", UUID(as_uuid=True), server_default=GEN_UUID, nullable=False),
        sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_api_keys_organization_id_organizations",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint(
            "key_hash", "organization_id", name="uq_api_keys_key_hash_organization_id"
        ),
    )


def _tenant_foreign_keys(table: str) -> list[sa.ForeignKeyConstraint]:
    return [
        sa.ForeignKeyConstraint(
            ["organization_id", f"{parent[:-1]}_id"],
            [f"{parent}.organization_id", f"{parent}.id"],
            name=f"fk_{table}_organization_id_{parent[:-1]}_id_{parent}",
            ondelete="RESTRICT",
        )
        for parent in ("patients", "providers")
    ]


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("SET LOCAL statement_timeout = '60s'")
    op.drop_table("api_keys")
    op.drop_table("care_team_events")
    op.drop_table("care_team_assignments")
    op.drop_table("providers")
    op.drop_table("patients")
    op.drop_table("organizations")
