"""Care team assignments and their append-only event history."""

import datetime
import enum
import uuid

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TSTZRANGE, ExcludeConstraint, Range
from sqlalchemy.orm import Mapped, mapped_column

from src.models.base import Base
from src.primary_index import UNIQUE_PRIMARY_INDEX


def _same_organization_keys() -> list[ForeignKeyConstraint]:
    """Composite keys: the patient and the provider must be of the row's organization,
    so a row that mixes two organizations cannot exist."""
    return [
        ForeignKeyConstraint(
            ["organization_id", f"{column}_id"],
            [f"{column}s.organization_id", f"{column}s.id"],
            ondelete="RESTRICT",
        )
        for column in ("patient", "provider")
    ]


class EventType(enum.StrEnum):
    PRIMARY_ASSIGNED = "primary_assigned"
    PRIMARY_DEMOTED = "primary_demoted"
    SECONDARY_ADDED = "secondary_added"
    PROVIDER_REMOVED = "provider_removed"
    MIGRATION_DEDUPE = "migration_dedupe"


def one_of(column: str, values: type[enum.StrEnum]) -> str:
    """A CHECK constraint's condition: `column` is one of the enum's values."""
    return "{} IN ({})".format(column, ", ".join(f"'{v.value}'" for v in values))


EVENT_TYPES = tuple(e.value for e in EventType)
# The list of event types, as the table's CHECK constraint states it (the model uses
# this; the initial revision carries its own frozen copy; the service binds the enum's
# values as parameters).
EVENT_TYPE_CHECK = one_of("event_type", EventType)


class PeriodRole(enum.StrEnum):
    """What a provider was on a patient's care team during a period."""

    PRIMARY = "primary"
    SECONDARY = "secondary"


class ChangeReason(enum.StrEnum):
    """Why a care team changed: the one vocabulary of every write, its events and periods."""

    PATIENT_REQUEST = "patient_request"
    PROVIDER_REQUEST = "provider_request"
    PROVIDER_LEFT = "provider_left"
    PANEL_REBALANCE = "panel_rebalance"
    DATA_CORRECTION = "data_correction"
    OTHER = "other"


NOTE_MAX_LENGTH = 500  # a note may hold health information: stored, never logged


class CareTeamAssignment(Base):
    __tablename__ = "care_team_assignments"
    __table_args__ = (
        *_same_organization_keys(),
        UniqueConstraint("organization_id", "patient_id", "provider_id"),
        Index(
            UNIQUE_PRIMARY_INDEX,
            "organization_id",
            "patient_id",
            unique=True,
            postgresql_where=text("is_primary_provider = true"),
        ),
        # Panel sizes: a provider's current primaries.
        Index(
            "ix_care_team_assignments_organization_id_provider_id_primary",
            "organization_id",
            "provider_id",
            postgresql_where=text("is_primary_provider"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    organization_id: Mapped[uuid.UUID]
    patient_id: Mapped[uuid.UUID]
    provider_id: Mapped[uuid.UUID]
    is_primary_provider: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    assigned_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class CareTeamEvent(Base):
    """One change to a care team, written in the same transaction as the change."""

    __tablename__ = "care_team_events"
    __table_args__ = (
        *_same_organization_keys(),
        CheckConstraint(EVENT_TYPE_CHECK, name="event_type"),
        CheckConstraint(f"reason IS NULL OR {one_of('reason', ChangeReason)}", name="reason"),
        CheckConstraint(f"note IS NULL OR length(note) <= {NOTE_MAX_LENGTH}", name="note"),
        Index("uq_care_team_events_organization_id_seq", "organization_id", "seq", unique=True),
        Index(None, "organization_id", "patient_id", "seq"),
        Index(
            "ix_care_team_events_organization_id_write_id",
            "organization_id",
            "write_id",
            postgresql_where=text("write_id IS NOT NULL"),
        ),
    )

    # Internal only: one identity for all tenants. What tenants see is `seq`.
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # The event's number within its organization (1, 2, 3, ... in commit order), set by
    # the trigger number_care_team_event from care_team_event_sequences.
    seq: Mapped[int] = mapped_column(BigInteger)
    organization_id: Mapped[uuid.UUID]
    patient_id: Mapped[uuid.UUID]
    provider_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(Text)
    previous_primary_provider_id: Mapped[uuid.UUID | None]
    actor: Mapped[str] = mapped_column(Text, server_default=text("'system'"))
    reason: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # The service's id for the write that recorded it (careteam_change_team sets
    # `careteam.write_id` for its transaction; this default takes it): how a write whose
    # connection was lost finds whether it committed. NULL for events written otherwise.
    write_id: Mapped[uuid.UUID | None] = mapped_column(
        server_default=text("nullif(current_setting('careteam.write_id', true), '')::uuid")
    )


class CareTeamPeriod(Base):
    """When a provider held which role on a patient's care team. The open periods are the
    current team (a trigger on care_team_assignments keeps them in step); exclusion
    constraints forbid two overlapping primary periods of a patient, and two overlapping
    periods of one provider for a patient."""

    __tablename__ = "care_team_periods"
    __table_args__ = (
        *_same_organization_keys(),
        CheckConstraint(one_of("role", PeriodRole), name="role"),
        CheckConstraint("NOT isempty(valid) AND NOT lower_inf(valid)", name="valid"),
        CheckConstraint(one_of("start_reason", ChangeReason), name="start_reason"),
        CheckConstraint(
            f"end_reason IS NULL OR {one_of('end_reason', ChangeReason)}", name="end_reason"
        ),
        CheckConstraint("upper_inf(valid) = (end_reason IS NULL)", name="ended"),
        CheckConstraint(
            f"coalesce(length(start_note), 0) <= {NOTE_MAX_LENGTH} "
            f"AND coalesce(length(end_note), 0) <= {NOTE_MAX_LENGTH}",
            name="notes",
        ),
        # Both lead with patient_id: a GiST index splits its pages on its first column,
        # and on organization_id (a few values) pages mixed patients of every range, so
        # each probe read more pages as the table grew (see the migration).
        ExcludeConstraint(
            ("patient_id", "="),
            ("organization_id", "="),
            ("valid", "&&"),
            name="excl_care_team_periods_one_primary",
            using="gist",
            where=text(f"role = '{PeriodRole.PRIMARY.value}'"),
        ),
        ExcludeConstraint(
            ("patient_id", "="),
            ("organization_id", "="),
            ("provider_id", "="),
            ("valid", "&&"),
            name="excl_care_team_periods_one_per_provider",
            using="gist",
        ),
        Index(None, "organization_id", "provider_id", "patient_id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    patient_id: Mapped[uuid.UUID]
    provider_id: Mapped[uuid.UUID]
    role: Mapped[str] = mapped_column(Text)
    valid: Mapped[Range[datetime.datetime]] = mapped_column(TSTZRANGE)
    started_by: Mapped[str] = mapped_column(Text)
    start_reason: Mapped[str] = mapped_column(Text)
    start_note: Mapped[str | None] = mapped_column(Text)
    ended_by: Mapped[str | None] = mapped_column(Text)
    end_reason: Mapped[str | None] = mapped_column(Text)
    end_note: Mapped[str | None] = mapped_column(Text)


class CareTeamEventSequence(Base):
    """The last event number of each organization; the trigger on care_team_events takes
    the next one (and holds this row until its transaction commits)."""

    __tablename__ = "care_team_event_sequences"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class RuleCheck(Base):
    """The last count of the rule's violations (one row), kept by careteam_rule_status()
    so that one scan per period serves every API process."""

    __tablename__ = "careteam_rule_checks"
    __table_args__ = (CheckConstraint("id", name="careteam_rule_checks_id_check"),)

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    checked_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    several_primaries: Mapped[int] = mapped_column(BigInteger)
    without_primary: Mapped[int] = mapped_column(BigInteger)
    index_valid: Mapped[bool | None] = mapped_column(Boolean)


class Secret(Base):
    """Keys the API uses (one row: `cursor`, the key that seals cursors). No tenant data;
    the application role may only read it."""

    __tablename__ = "careteam_secrets"
    __table_args__ = (CheckConstraint("length(value) >= 32", name="value"),)

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
