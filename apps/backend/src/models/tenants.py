"""Organizations (the tenants) and the patients and providers that belong to them."""

import datetime
import enum
import uuid

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from src.models.base import Base
from src.models.care_team import one_of

_GEN_UUID = text("gen_random_uuid()")


class Gender(enum.StrEnum):
    """FHIR R4 AdministrativeGender (required binding of Patient.gender in US Core)."""

    MALE = "male"
    FEMALE = "female"
    OTHER = "other"
    UNKNOWN = "unknown"


def _name_prefix_indexes(table: str) -> list[Index]:
    """Case-insensitive name prefixes (a range of text_pattern_ops on the name keys: the
    names in lower case, kept by a trigger), in id order."""
    return [
        Index(
            f"ix_{table}_organization_id_{column}_key",
            "organization_id",
            f"{column}_key",
            "id",
            postgresql_ops={f"{column}_key": "text_pattern_ops"},
        )
        for column in ("last_name", "first_name")
    ]


def _sort_key(column: str) -> str:
    """A name key as the name order sorts it (revision 20261207_patient_primary_sort)."""
    return f"(CASE WHEN {column} IS NULL THEN '' ELSE {column} END) COLLATE \"C\""


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=_GEN_UUID)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Patient(Base):
    __tablename__ = "patients"
    # (organization_id, id) is what children reference, so a child row can only ever
    # point at a patient of its own organization.
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        *_name_prefix_indexes("patients"),
        Index("ix_patients_organization_id_dob_id", "organization_id", "dob", "id"),
        # The list's orders (`sort`): names byte-wise, then id; creation, then id.
        Index(
            "ix_patients_organization_id_name_order",
            "organization_id",
            text(_sort_key("last_name_key")),
            text(_sort_key("first_name_key")),
            "id",
        ),
        Index("ix_patients_organization_id_created_at_id", "organization_id", "created_at", "id"),
        CheckConstraint(one_of("gender", Gender), name="gender"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=_GEN_UUID)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    # The names in lower case, for prefix searches (set by a trigger on every write).
    first_name_key: Mapped[str | None] = mapped_column(Text)
    last_name_key: Mapped[str | None] = mapped_column(Text)
    dob: Mapped[datetime.date | None] = mapped_column(Date)
    # FHIR administrative gender; `unknown` where none was given (and for every record
    # written before the column existed).
    gender: Mapped[str] = mapped_column(Text, server_default=text("'unknown'"))
    # 1 at creation, one more with each change of the record (its ETag).
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Provider(Base):
    __tablename__ = "providers"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        CheckConstraint("panel_capacity IS NULL OR panel_capacity >= 0", name="panel_capacity"),
        *_name_prefix_indexes("providers"),
        Index(
            "uq_providers_organization_id_npi",
            "organization_id",
            "npi",
            unique=True,
            postgresql_where=text("npi IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=_GEN_UUID)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    first_name_key: Mapped[str | None] = mapped_column(Text)
    last_name_key: Mapped[str | None] = mapped_column(Text)
    npi: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # How many patients it may be the primary provider of (NULL: no limit).
    panel_capacity: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ApiKey(Base):
    """A bearer API key of one organization; only its SHA-256 hash is stored. A SMART
    access token is a row too: with its client (`client_id`) and `expires_at`, both null
    for a key (revision 20261207_smart_clients)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("key_hash", "organization_id"),
        ForeignKeyConstraint(
            ["organization_id", "client_id"],
            ["smart_clients.organization_id", "smart_clients.id"],
            ondelete="RESTRICT",
        ),
        Index(
            None,
            "organization_id",
            "client_id",
            postgresql_where=text("client_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=_GEN_UUID)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    key_hash: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    # SMART v2 scopes (src/scopes.py). The default is what keys made before scopes
    # existed could do (revision 20261207_key_scopes); the application always sets them.
    scopes: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{system/*.cruds,careteam/admin}'::text[]")
    )
    client_id: Mapped[uuid.UUID | None] = mapped_column()
    expires_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class SmartClient(Base):
    """A SMART Backend Services client of one organization (`careteam client register`):
    its public keys (a JWK Set) or the URL to fetch them from, exactly one, and the scopes
    it may be granted."""

    __tablename__ = "smart_clients"
    __table_args__ = (
        CheckConstraint("num_nonnulls(jwks, jwks_url) = 1", name="keys"),
        Index(None, "id"),  # a client is found by the id it sends
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=_GEN_UUID)
    name: Mapped[str] = mapped_column(Text)
    jwks: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    jwks_url: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class SmartClientAssertion(Base):
    """The `jti` of a client assertion the token endpoint accepted, kept until the
    assertion's `exp` has passed: its primary key refuses the same jti twice."""

    __tablename__ = "smart_client_assertions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "client_id"],
            ["smart_clients.organization_id", "smart_clients.id"],
            name="fk_smart_client_assertions_client_id_smart_clients",
            ondelete="RESTRICT",
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    client_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    jti: Mapped[str] = mapped_column(Text, primary_key=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
