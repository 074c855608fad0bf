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
    Text,
    UniqueConstraint,
    func,
    text,
)
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


EVENT_TYPES = tuple(e.value for e in EventType)
# The one list of event types, as the table's CHECK constraint states it (the migrations
# and the model both use this; the service binds the enum's values as parameters).
EVENT_TYPE_CHECK = "event_type IN ({})".format(", ".join(f"'{t}'" for t in EVENT_TYPES))


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
        Index("uq_care_team_events_organization_id_seq", "organization_id", "seq", unique=True),
        Index(None, "organization_id", "patient_id", "seq"),
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
    occurred_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


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
