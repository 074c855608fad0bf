"""What integrators need around the records: patient identifiers, the audit trail of
record changes, and idempotency keys."""

import datetime
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    LargeBinary,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from src.models.base import Base
from src.models.care_team import one_of
from src.values import IDENTIFIER_MAX_LENGTH


class RecordType(enum.StrEnum):
    PATIENT = "patient"
    PROVIDER = "provider"


class RecordAction(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"


class PatientIdentifier(Base):
    """An identifier of a patient (an MRN, ...): (system, value) names at most one patient
    of an organization."""

    __tablename__ = "patient_identifiers"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "patient_id"],
            ["patients.organization_id", "patients.id"],
            ondelete="RESTRICT",
        ),
        CheckConstraint(f"length(system) BETWEEN 1 AND {IDENTIFIER_MAX_LENGTH}", name="system"),
        CheckConstraint(f"length(value) BETWEEN 1 AND {IDENTIFIER_MAX_LENGTH}", name="value"),
        Index(None, "organization_id", "patient_id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    system: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    patient_id: Mapped[uuid.UUID]


class RecordChange(Base):
    """Who changed which fields of a patient or provider record, and when (the fields'
    names only, never their values), and, from revision 20261207_record_snapshots on, the
    record as that change left it (`snapshot`: health data, read back by the service,
    never logged)."""

    __tablename__ = "record_changes"
    __table_args__ = (
        CheckConstraint(one_of("record_type", RecordType), name="record_type"),
        CheckConstraint(one_of("action", RecordAction), name="action"),
        Index(
            "uq_record_changes_organization_id_record_id_seq",
            "organization_id",
            "record_id",
            "seq",
            unique=True,
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    record_type: Mapped[str] = mapped_column(Text)
    record_id: Mapped[uuid.UUID]
    # 1 for the record's creation, then 2, 3, ...: numbered per record, under its lock.
    seq: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(ARRAY(Text))
    actor: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # The record's version after this change, and its fields then (a JSON object); both
    # NULL on the changes written before revision 20261207_record_snapshots.
    version: Mapped[int | None] = mapped_column(BigInteger)
    snapshot: Mapped[Any | None] = mapped_column(JSONB)


class IdempotencyKey(Base):
    """A write's Idempotency-Key: the request it came with (a fingerprint) and the
    response it got, stored in the write's own transaction."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index(None, "organization_id", "created_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str | None] = mapped_column(Text)
    # The service's result, stored with the change (careteam_store_result); NULL while the
    # claim is in progress, and on the rows of the release before (`status_code`, `body`).
    result: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
